"""verify_announcer: DKIM with a key made here and DNS answered here; Authentication-Results from our own MTA only;
a signed mail is an announcement only when it was written for announce@ (To/Cc, fresh Date, no repeated headers)."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from functools import cache

import dkim
import pytest

from qaflow_mail.mail.dkim_check import (
    MAX_AUTH_RESULTS_CHARS,
    SINGLETON_HEADERS,
    AuthMethod,
    AuthVerdict,
    aligned,
    parse_authentication_results,
    raw_headers,
    trusted_authentication_results,
    verify_announcer,
)
from qaflow_mail.mail.parse import parse_message

# ---------------------------------------------------------------------------------------------------------------
# A throwaway RSA key in pure Python (dkimpy ships its own RSA, and no crypto library is needed to make one).

_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]


def _probably_prime(n: int, rounds: int = 24) -> bool:
    if any(n % p == 0 for p in _SMALL_PRIMES):
        return n in _SMALL_PRIMES
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if _probably_prime(candidate):
            return candidate


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


_RSA_ENCRYPTION_OID = bytes.fromhex("06092a864886f70d010101")


@dataclass(frozen=True)
class TestKey:
    private_pem: bytes
    public_txt: bytes  # the DNS TXT value: v=DKIM1; k=rsa; p=...

    __test__ = False  # not a test class, whatever its name says


def make_key(bits: int = 1024) -> TestKey:
    e = 65537
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    n, d = p * q, pow(e, -1, phi)
    private = _seq(*(_der_int(v) for v in (0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p))))
    public = _seq(_seq(_RSA_ENCRYPTION_OID, _der(0x05, b"")), _der(0x03, b"\x00" + _seq(_der_int(n), _der_int(e))))
    body = base64.encodebytes(private).replace(b"\n", b"")
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n" + lines + b"\n-----END RSA PRIVATE KEY-----\n"
    return TestKey(private_pem=pem, public_txt=b"v=DKIM1; k=rsa; p=" + base64.b64encode(public))


@cache
def shared_key() -> TestKey:
    return make_key()


def dns_for(records: dict[str, bytes]) -> Callable[..., bytes | None]:
    """A dkimpy dnsfunc answering TXT lookups from `records` ({"sel._domainkey.example.org": txt})."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.decode("ascii").rstrip(".").lower())

    return lookup


SIGNED = ("from", "to", "subject", "date", "message-id")
ANNOUNCE = "announce@forum.test"
DATE = "Mon, 02 Jun 2025 09:00:00 +0000"
NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)  # half an hour after DATE


def sign(raw: bytes, *, domain: str, selector: str = "test", key: TestKey | None = None,
         headers: tuple[str, ...] = SIGNED) -> bytes:
    """`raw` (CRLF) with a DKIM-Signature by `domain` over `headers` prepended."""
    signature = dkim.sign(raw, selector.encode(), domain.encode(), (key or shared_key()).private_pem,
                          include_headers=[name.encode() for name in headers])
    return bytes(signature) + raw


def message(*, sender: str = "Alice Admin <alice@example.org>", body: str = "The forum moves tonight.\r\n",
            extra_headers: str = "", to: str = ANNOUNCE, date: str | datetime = DATE) -> bytes:
    """An announcement (CRLF); `date` a Date header value, or a moment to write as one."""
    dated = format_datetime(date) if isinstance(date, datetime) else date
    return (
        f"{extra_headers}From: {sender}\r\nTo: {to}\r\nSubject: Maintenance tonight\r\n"
        f"Date: {dated}\r\nMessage-ID: <announce-1@example.org>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def check(raw: bytes, *, from_domain: str = "example.org", records: dict[str, bytes] | None = None,
          authserv_id: str = "", now: datetime = NOW) -> AuthVerdict:
    key = shared_key()
    dns = dns_for(records if records is not None else {"test._domainkey.example.org": key.public_txt})
    return verify_announcer(raw, parse_message(raw), from_domain=from_domain, announce_address=ANNOUNCE, now=now,
                            dnsfunc=dns, trusted_authserv_id=authserv_id)


# ---------------------------------------------------------------------------------------------------------------


def test_a_valid_aligned_signature_passes_by_dkim() -> None:
    verdict = check(sign(message(), domain="example.org"))
    assert verdict.passed and verdict.method is AuthMethod.DKIM, verdict


def test_a_signature_by_a_parent_domain_is_aligned() -> None:
    raw = sign(message(sender="alice@lists.example.org"), domain="example.org")
    verdict = check(raw, from_domain="lists.example.org")
    assert verdict.passed, verdict


def test_a_tampered_body_fails() -> None:
    raw = sign(message(), domain="example.org").replace(b"moves tonight", b"moves to evil.example")
    verdict = check(raw)
    assert not verdict.passed and verdict.method is AuthMethod.NONE
    assert "does not verify (body hash mismatch)" in verdict.reason


def test_a_valid_signature_by_another_domain_is_not_aligned() -> None:
    key = shared_key()
    raw = sign(message(), domain="attacker.example")
    verdict = check(raw, records={"test._domainkey.attacker.example": key.public_txt})
    assert not verdict.passed
    assert "not aligned" in verdict.reason


def test_a_signature_whose_key_is_not_in_dns_fails() -> None:
    verdict = check(sign(message(), domain="example.org"), records={})
    assert not verdict.passed


def test_a_signature_made_with_another_key_fails() -> None:
    other = make_key()
    raw = sign(message(), domain="example.org", key=other)
    verdict = check(raw)  # DNS publishes the shared key, not `other`
    assert not verdict.passed


def test_no_signature_fails_with_a_reason() -> None:
    verdict = check(message())
    assert not verdict.passed and "no DKIM signature" in verdict.reason


def test_a_second_from_header_is_refused_even_when_signed() -> None:
    raw = sign(message(), domain="example.org")
    raw = b"From: mallory@evil.example\r\n" + raw
    verdict = check(raw)
    assert not verdict.passed and "exactly one From" in verdict.reason


def test_a_later_good_signature_counts_when_the_first_is_broken() -> None:
    good = sign(message(), domain="example.org")
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=gone; h=from; bh=AAAA; b=AAAA\r\n" + good
    verdict = check(broken)
    assert verdict.passed, verdict


def test_a_body_length_limit_is_not_enough() -> None:
    raw = message()
    signature = dkim.sign(raw, b"test", b"example.org", shared_key().private_pem, length=True,
                          include_headers=[name.encode() for name in SIGNED])
    verdict = check(bytes(signature) + raw + b"Appended by someone else.\r\n")
    assert not verdict.passed and "(l=)" in verdict.reason


TRUSTED = "mx.forum.test"


@pytest.mark.parametrize(
    ("header", "passed"),
    [
        (f"{TRUSTED}; dkim=pass header.d=example.org header.s=sel", True),
        (f"{TRUSTED} 1; dkim=pass (2048-bit key) header.d=example.org header.i=@example.org", True),
        # Only header.d names the signing domain; header.i alone is not taken for it.
        (f"{TRUSTED} 1; dkim=pass (2048-bit key) header.i=@example.org", False),
        (f"{TRUSTED}; spf=pass smtp.mailfrom=example.org; dmarc=pass (p=reject) header.from=example.org", True),
        (f'{TRUSTED}; dkim=pass header.d="mail.example.org"', True),
        (f"{TRUSTED}; dkim=fail header.d=example.org; dmarc=fail header.from=example.org", False),
        (f"{TRUSTED}; dkim=pass header.d=attacker.example", False),
        (f"{TRUSTED}; dmarc=pass header.from=sub.example.org", False),
        (f"{TRUSTED}; spf=pass smtp.mailfrom=example.org", False),
        ("mx.attacker.example; dkim=pass header.d=example.org", False),
        (f"{TRUSTED}; none", False),
    ],
)
def test_authentication_results_from_our_mta(header: str, passed: bool) -> None:
    raw = message(extra_headers=f"Authentication-Results: {header}\r\n")
    verdict = check(raw, records={}, authserv_id=TRUSTED)
    assert verdict.passed is passed, verdict
    if passed:
        assert verdict.method is AuthMethod.AUTHENTICATION_RESULTS


def test_only_the_topmost_authentication_results_counts() -> None:
    forged_below = (
        "Authentication-Results: mx.forum.test; dkim=fail header.d=example.org\r\n"
        "Received: from evil.example by mx.forum.test\r\n"
        "Authentication-Results: mx.forum.test; dkim=pass header.d=example.org\r\n"
    )
    verdict = check(message(extra_headers=forged_below), records={}, authserv_id=TRUSTED)
    assert not verdict.passed


def test_authentication_results_are_ignored_when_no_mta_is_trusted() -> None:
    raw = message(extra_headers=f"Authentication-Results: {TRUSTED}; dkim=pass header.d=example.org\r\n")
    verdict = check(raw, records={}, authserv_id="")
    assert not verdict.passed


def test_parse_authentication_results_drops_comments_and_quotes() -> None:
    server, results = parse_authentication_results(
        'MX.Forum.Test (Postfix) 1; dkim=pass (good (nested) signature) header.s=a header.d="example.org"; '
        "dmarc=pass header.from=example.org"
    )
    assert server == "mx.forum.test"
    assert [(r.method, r.result) for r in results] == [("dkim", "pass"), ("dmarc", "pass")]
    assert results[0].properties == {"header.s": "a", "header.d": "example.org"}


def test_a_quoted_value_hides_nothing() -> None:
    """The reviewer's case: an SPF check of an attacker-chosen, quoted envelope sender next to a failed DKIM."""
    value = ('mx.forum.test; dkim=fail header.d=evil.example; '
             'spf=pass smtp.mailfrom="x;dkim=pass()header.d=example.org()"@evil.example')
    server, results = parse_authentication_results(value)
    assert server == TRUSTED
    assert [(r.method, r.result) for r in results] == [("dkim", "fail"), ("spf", "pass")]
    assert results[1].properties == {"smtp.mailfrom": '"x;dkim=pass()header.d=example.org()"@evil.example'}
    raw = message(extra_headers=f"Authentication-Results: {value}\r\n")
    assert not check(raw, records={}, authserv_id=TRUSTED).passed


def test_encoded_words_in_authentication_results_are_not_decoded() -> None:
    """Decoding =?..?= first would turn the quoted value into `"x";dkim=pass header.d=example.org;...`."""
    value = ('mx.forum.test; dkim=fail header.d=evil.example; spf=pass '
             'smtp.mailfrom="=?utf-8?q?x=22;dkim=pass_header.d=example.org_header.s=a;spf=pass_smtp.x=3D=22?="'
             '@evil.example')
    raw = message(extra_headers=f"Authentication-Results: {value}\r\n")
    assert not check(raw, records={}, authserv_id=TRUSTED).passed
    trusted = trusted_authentication_results(raw_headers(raw), authserv_id=TRUSTED, from_domain="example.org")
    assert (trusted.passed, trusted.failed) == (False, True)


@pytest.mark.parametrize(
    "value",
    [
        f"{TRUSTED}; garbage ;; dkim=pass header.d=example.org",  # not RFC 8601
        f"{TRUSTED}; dkim=pass header.d=example.org; " + "spf=none smtp.helo=x; " * (MAX_AUTH_RESULTS_CHARS // 20),
        f"{TRUSTED}; dkim=pass header.d=example.org (" + "(" * 3000 + ")" * 3000 + ")",
        f"{TRUSTED}; dkim=pass header.d=ex\u00e4mple.org",
    ],
)
def test_an_unreadable_or_oversized_header_yields_nothing(value: str) -> None:
    started = time.perf_counter()
    assert parse_authentication_results(value) == ("", [])
    assert time.perf_counter() - started < 1.0


def test_a_quoted_value_authres_cannot_place_is_dropped_not_misread() -> None:
    """authres reads a quoted value only at the end of its resinfo; elsewhere it drops the property (no pass)."""
    _, results = parse_authentication_results(f'{TRUSTED}; dkim=pass header.d="example.org" header.s=a')
    assert results[0].properties == {"header.s": "a"}
    raw = message(extra_headers=f'Authentication-Results: {TRUSTED}; dkim=pass header.d="example.org" header.s=a\r\n')
    assert not check(raw, records={}, authserv_id=TRUSTED).passed


# --- a signed mail that was not written for announce@ ------------------------------------------------------------


def test_a_replayed_private_mail_is_not_an_announcement() -> None:
    """The reviewer's replay: a DKIM-signed private mail of the admin, sent on to announce@ with an unsigned
    Subject put on top (DKIM verifies the bottom one; readers show the top one)."""
    private = sign(message(to="mallory@evil.example", body="Mallory, I have banned you.\r\n"), domain="example.org")
    verdict = check(private)
    assert not verdict.passed and f"{ANNOUNCE} is not in the To or Cc" in verdict.reason
    replay = b"Subject: Official: all accounts must re-verify at evil.example\r\n" + private
    verdict = check(replay)
    assert not verdict.passed and "repeats a header that must appear once (subject)" in verdict.reason


@pytest.mark.parametrize("name", SINGLETON_HEADERS)
def test_a_repeated_singleton_header_fails_even_when_the_signature_verifies(name: str) -> None:
    signed = sign(message(extra_headers="Sender: alice@example.org\r\nCc: bob@example.net\r\n"
                                        "Reply-To: alice@example.org\r\nBcc: x@example.net\r\n"
                                        "In-Reply-To: <a@example.org>\r\nReferences: <a@example.org>\r\n"),
                  domain="example.org")
    assert check(signed).passed
    value = {"date": DATE, "message-id": "<other@evil.example>", "to": ANNOUNCE}.get(name, "x@evil.example")
    verdict = check(f"{name.title()}: {value}\r\n".encode() + signed)
    expected = "exactly one From" if name == "from" else f"({name})"
    assert not verdict.passed and expected in verdict.reason


def test_an_unsigned_cc_to_announce_is_not_enough() -> None:
    """The announce address must sit in a header the signature covers."""
    signed = sign(message(to="bob@example.net"), domain="example.org")  # h= covers To, not Cc
    verdict = check(b"Cc: announce@forum.test\r\n" + signed)
    assert not verdict.passed and "does not sign cc" in verdict.reason
    signed_cc = sign(message(to="bob@example.net", extra_headers=f"Cc: {ANNOUNCE}\r\n"), domain="example.org",
                     headers=(*SIGNED, "cc"))
    assert check(signed_cc).passed


@pytest.mark.parametrize("left_out", ["subject", "date", "message-id", "to"])
def test_a_signature_must_cover_the_headers_that_make_an_announcement(left_out: str) -> None:
    raw = sign(message(), domain="example.org", headers=tuple(h for h in SIGNED if h != left_out))
    verdict = check(raw)
    assert not verdict.passed and "does not sign" in verdict.reason and left_out in verdict.reason


@pytest.mark.parametrize(
    ("date", "passed", "reason"),
    [
        (NOW - timedelta(hours=71), True, ""),
        (NOW - timedelta(hours=73), False, "more than 72 hours ago"),
        (NOW + timedelta(minutes=50), True, ""),
        (NOW + timedelta(hours=2), False, "more than 1 hour ahead"),
        ("yesterday-ish", False, "cannot be read"),
        ("", False, "has no Date"),
    ],
)
def test_the_date_must_be_recent(date: datetime | str, passed: bool, reason: str) -> None:
    verdict = check(sign(message(date=date), domain="example.org"))
    assert verdict.passed is passed, verdict
    assert reason in verdict.reason


def test_authentication_results_do_not_vouch_for_a_mail_written_elsewhere() -> None:
    header = f"Authentication-Results: {TRUSTED}; dkim=pass header.d=example.org\r\n"
    verdict = check(message(extra_headers=header, to="mallory@evil.example"), records={}, authserv_id=TRUSTED)
    assert not verdict.passed and "is not in the To or Cc" in verdict.reason
    stale = message(extra_headers=header, date=NOW - timedelta(days=5))
    assert not check(stale, records={}, authserv_id=TRUSTED).passed


def test_authentication_results_need_every_aligned_signature_to_cover_the_announcement() -> None:
    """Our MTA does not say which signature it checked: an aligned one that leaves Cc unsigned spoils the pass."""
    signed = sign(message(to="bob@example.net"), domain="example.org")
    raw = f"Authentication-Results: {TRUSTED}; dkim=pass header.d=example.org\r\nCc: {ANNOUNCE}\r\n".encode()
    verdict = check(raw + signed, records={}, authserv_id=TRUSTED)
    assert not verdict.passed and "does not sign cc" in verdict.reason
    good = f"Authentication-Results: {TRUSTED}; dkim=pass header.d=example.org\r\n".encode()
    verdict = check(good + sign(message(), domain="example.org"), records={}, authserv_id=TRUSTED)
    assert verdict.passed and verdict.method is AuthMethod.AUTHENTICATION_RESULTS


def test_raw_headers_are_read_as_dkim_reads_them() -> None:
    raw = (b"\r\nFrom: a@example.org\r\nSubject: one\r\n two\r\nX-Odd line without colon\r\n"
           b"Authentication-Results: mx; dkim=pass header.d=\"=?utf-8?q?x=22?=\"\r\n\r\nSubject: body\r\n")
    assert raw_headers(raw) == [("from", "a@example.org"), ("subject", "one two"),
                                ("authentication-results", 'mx; dkim=pass header.d="=?utf-8?q?x=22?="')]


@pytest.mark.parametrize(
    ("signer", "author", "expected"),
    [
        ("example.org", "example.org", True),
        ("Example.ORG.", "example.org", True),
        ("example.org", "lists.example.org", True),
        ("mail.example.org", "example.org", True),
        ("example.org", "example.org.evil.example", False),
        ("notexample.org", "example.org", False),
        ("org", "example.org", False),
        ("", "example.org", False),
    ],
)
def test_alignment(signer: str, author: str, expected: bool) -> None:
    assert aligned(signer, author) is expected
