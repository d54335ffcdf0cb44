"""Is an announcement really from the domain in its From, and really meant for announce@? A verified, aligned
DKIM signature (dkimpy), or the verdict our own MTA wrote in Authentication-Results (RFC 8601, parsed by
authres). Pure apart from the DNS lookup `dnsfunc` does.

A valid signature alone proves only that the admin's domain sent *some* mail. Anyone who received one (a private
reply, a post to a mailing list) could send it on to announce@, possibly with an unsigned Subject of their own
put on top (DKIM verifies the bottom-most instance of a header, a mail reader shows the top one). So the message
must also:
- name the announce address in To or Cc, and the signature must cover that header;
- carry each RFC 5322 singleton header (From, Subject, Date, To, ...) at most once;
- carry a Date within MAX_AGE before and MAX_AHEAD after `now`;
- have a signature whose h= covers From, Subject, Date and Message-ID (so the Message-ID dedupe stops a
  second delivery of the very same mail).
Through Authentication-Results we cannot tell which signature our MTA checked, so there every signature aligned
with the From domain must cover those headers.

Alignment is DMARC's relaxed mode approximated without the Public Suffix List: the signing domain (d=) and the
From domain are equal, or one is a subdomain of the other, and d= has at least two labels (so a signature by a
bare TLD never counts).

Only the topmost Authentication-Results header is read, and only when its authserv-id is the one configured for
our own MTA: that MTA prepends its header, so anything further down was written by someone else (possibly the
sender). The MTA should also remove headers claiming its authserv-id from incoming mail (RFC 8601 §5). Headers
are read from the raw bytes: decoding RFC 2047 encoded-words first could turn an attacker's quoted value into
syntax.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

import authres
import authres.core
import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from qaflow_mail.mail.parse import ParsedMail

# dkimpy's resolver signature: (b"selector._domainkey.example.org.", timeout=5) -> TXT value or None.
DnsFunc = Callable[..., bytes | None]

# RFC 5322 §3.6: at most one of each. dkimpy's DKIM.RFC5322_SINGLETON lacks subject, which matters most here.
SINGLETON_HEADERS = ("from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to", "references",
                     "subject", "date")
# What a signature must cover, besides the To or Cc that names the announce address.
SIGNED_HEADERS = ("from", "subject", "date", "message-id")
MAX_AGE = timedelta(hours=72)
MAX_AHEAD = timedelta(hours=1)
# Our MTA writes a few hundred characters; authres works in time quadratic in the length, so longer is refused.
MAX_AUTH_RESULTS_CHARS = 8192

_HEADER_NAME_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")  # as dkimpy reads it: printable, no space, up to ':'
_LEADING_BLANK_LINES_RE = re.compile(rb"\A(?:[ \t]*\r?\n)+")
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")


class AuthMethod(StrEnum):
    DKIM = "dkim"
    AUTHENTICATION_RESULTS = "authentication-results"
    NONE = ""


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    passed: bool
    method: AuthMethod
    reason: str


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One resinfo of an Authentication-Results header: method, result and "ptype.property" -> value."""

    method: str
    result: str
    properties: dict[str, str]


@dataclass(frozen=True, slots=True)
class TrustedResults:
    """What our own MTA's topmost Authentication-Results says about a message's From domain."""

    passed: bool  # dkim=pass with header.d aligned, or dmarc=pass with header.from the From domain
    failed: bool  # an spf, dkim or dmarc fail or permerror
    reason: str
    signer: str = ""  # the aligned header.d of a dkim pass, "" for a dmarc pass


def verify_announcer(
    raw: bytes,
    parsed: ParsedMail,
    *,
    from_domain: str,
    announce_address: str,
    now: datetime,
    dnsfunc: DnsFunc | None,
    trusted_authserv_id: str,
) -> AuthVerdict:
    """Whether the message provably comes from `from_domain` and was written for `announce_address`.

    `now` (aware) bounds the Date. `dnsfunc` answers dkimpy's TXT lookups; None uses dkimpy's resolver (real DNS,
    blocking: call this from a thread when the loop must stay responsive).
    """
    domain = _domain(from_domain)
    if not domain:
        return AuthVerdict(False, AuthMethod.NONE, "no From domain")
    headers = raw_headers(raw)
    problem = _message_problem(headers, parsed, announce_address=announce_address, now=now)
    if problem:
        return AuthVerdict(False, AuthMethod.NONE, problem)
    announce_in = _announce_headers(parsed, announce_address)
    reasons: list[str] = []
    if trusted_authserv_id:
        verdict = _authentication_results(headers, domain=domain, authserv_id=trusted_authserv_id,
                                          announce_in=announce_in)
        if verdict.passed:
            return verdict
        reasons.append(verdict.reason)
    verdict = _dkim(raw, headers, domain=domain, dnsfunc=dnsfunc, announce_in=announce_in)
    if verdict.passed:
        return verdict
    reasons.append(verdict.reason)
    return AuthVerdict(False, AuthMethod.NONE, "; ".join(reasons))


def aligned(signing_domain: str, from_domain: str) -> bool:
    """Relaxed alignment, approximated: equal, or one a subdomain of the other; d= has two labels or more."""
    signer, author = _domain(signing_domain), _domain(from_domain)
    if not signer or not author or "." not in signer:
        return False
    return signer == author or author.endswith("." + signer) or signer.endswith("." + author)


def _domain(value: str) -> str:
    return value.strip().rstrip(".").lower()


# --- the message itself ------------------------------------------------------------------------------------


def raw_headers(raw: bytes) -> list[tuple[str, str]]:
    """(lowercased name, unfolded value) of each header field in the raw head, in order, nothing decoded.

    Lines are read as dkimpy reads them (a name of printable characters up to ':'); other lines are skipped.
    """
    text = _LEADING_BLANK_LINES_RE.sub(b"", raw)
    end = _HEAD_END_RE.search(text)
    head = text[: end.start()] if end else text
    fields: list[tuple[str, list[bytes]]] = []
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1].append(line)
            continue
        match = _HEADER_NAME_RE.match(line)
        if match is None:
            continue
        fields.append((match.group(1).decode("ascii").lower(), [line[match.end():]]))
    return [(name, b" ".join(part.strip() for part in parts).decode("utf-8", "replace").strip())
            for name, parts in fields]


def _counts(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return counts


def _message_problem(
    headers: list[tuple[str, str]], parsed: ParsedMail, *, announce_address: str, now: datetime
) -> str:
    """Why the message cannot be an authentic announcement whatever signs it, or "" when nothing is wrong."""
    raw_counts = _counts(name for name, _ in headers)
    parsed_counts = _counts(name.lower() for name, _ in parsed.headers)
    if raw_counts.get("from", 0) != 1 or parsed_counts.get("from", 0) != 1:
        return "the message must have exactly one From header"
    repeated = [name for name in SINGLETON_HEADERS
                if raw_counts.get(name, 0) > 1 or parsed_counts.get(name, 0) > 1]
    if repeated:
        return f"the message repeats a header that must appear once ({', '.join(repeated)})"
    if not _announce_headers(parsed, announce_address):
        return f"{announce_address} is not in the To or Cc of the message"
    return _date_problem(next((value for name, value in headers if name == "date"), None), now=now)


def _announce_headers(parsed: ParsedMail, announce_address: str) -> frozenset[str]:
    """Which of To and Cc name the announce address."""
    address = announce_address.strip().lower()
    return frozenset(name for name, values in (("to", parsed.to), ("cc", parsed.cc)) if address in values)


def _date_problem(value: str | None, *, now: datetime) -> str:
    if not value:
        return "the message has no Date"
    try:
        dated = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return "the Date of the message cannot be read"
    if dated.tzinfo is None:  # "-0000": UTC, origin unknown
        dated = dated.replace(tzinfo=UTC)
    if dated < now - MAX_AGE:
        return f"the message is dated {dated:%Y-%m-%d %H:%M %z}, more than {_hours(MAX_AGE)} hours ago"
    if dated > now + MAX_AHEAD:
        return f"the message is dated {dated:%Y-%m-%d %H:%M %z}, more than {_hours(MAX_AHEAD)} hour ahead"
    return ""


def _hours(delta: timedelta) -> int:
    return int(delta.total_seconds() // 3600)


def _coverage_problem(covered: Iterable[str], announce_in: frozenset[str]) -> str:
    """What a signature's h= (`covered`) leaves unsigned that an announcement needs signed, or ""."""
    names = {name.strip().lower() for name in covered}
    missing = [name for name in SIGNED_HEADERS if name not in names]
    if not announce_in & names:
        missing.append(" or ".join(sorted(announce_in)) or "to")
    return f"does not sign {', '.join(missing)}" if missing else ""


# --- DKIM ------------------------------------------------------------------------------------------------------


def _dkim(raw: bytes, headers: list[tuple[str, str]], *, domain: str, dnsfunc: DnsFunc | None,
          announce_in: frozenset[str]) -> AuthVerdict:
    count = sum(1 for name, _ in headers if name == "dkim-signature")
    if count == 0:
        return AuthVerdict(False, AuthMethod.NONE, "no DKIM signature")
    reasons: list[str] = []
    for index in range(count):
        checker = dkim.DKIM(raw)
        try:
            ok = checker.verify(idx=index, dnsfunc=dnsfunc) if dnsfunc is not None else checker.verify(idx=index)
            problem = "" if ok else "bad signature or no key"
        except dkim.DKIMException as exc:
            ok, problem = False, str(exc).split(" (", 1)[0]  # drop the hashes dkimpy appends
        signer = bytes(checker.domain or b"").decode("ascii", "replace")
        covered = [bytes(name).decode("ascii", "replace") for name in (getattr(checker, "include_headers", ()) or ())]
        if not ok:
            reasons.append(f"the DKIM signature by {signer or '(unknown)'} does not verify ({problem})")
        elif b"l" in (checker.signature_fields or {}):
            # A body length limit lets anyone append text below the signed part.
            reasons.append(f"the DKIM signature by {signer} covers only part of the body (l=)")
        elif not aligned(signer, domain):
            reasons.append(f"the DKIM signature by {signer} is not aligned with {domain}")
        elif coverage := _coverage_problem(covered, announce_in):
            reasons.append(f"the DKIM signature by {signer} {coverage}")
        else:
            return AuthVerdict(True, AuthMethod.DKIM, f"the DKIM signature by {signer} verifies")
    return AuthVerdict(False, AuthMethod.NONE, "; ".join(reasons))


def _aligned_signature_problem(headers: list[tuple[str, str]], *, domain: str, announce_in: frozenset[str]) -> str:
    """Whether every DKIM-Signature aligned with `domain` covers what an announcement needs ("" when so)."""
    for name, value in headers:
        if name != "dkim-signature":
            continue
        try:
            tags = parse_tag_value(value.encode("utf-8", "replace"))
        except InvalidTagValueList:
            continue  # it cannot have verified either
        signer = bytes(tags.get(b"d", b"")).decode("ascii", "replace")
        if not aligned(signer, domain):
            continue
        covered = re.split(r"\s*:\s*", bytes(tags.get(b"h", b"")).decode("ascii", "replace"))
        if coverage := _coverage_problem(covered, announce_in):
            return f"a DKIM signature by {signer} {coverage}"
        if b"l" in tags:
            return f"a DKIM signature by {signer} covers only part of the body (l=)"
    return ""


# --- Authentication-Results ------------------------------------------------------------------------------------


def parse_authentication_results(value: str) -> tuple[str, list[AuthResult]]:
    """(authserv-id, results) of one raw Authentication-Results value (RFC 8601: quoted strings and comments
    respected); ("", []) when it does not parse, is too long, or says "none"."""
    if len(value) > MAX_AUTH_RESULTS_CHARS:
        return "", []
    try:
        header = authres.AuthenticationResultsHeader.parse_value(value)
    except (authres.core.AuthResError, RecursionError):
        return "", []
    results = [
        AuthResult(
            method=str(item.method).lower(),
            result=str(item.result).lower(),
            properties={f"{prop.type}.{prop.name}".lower(): str(prop.value) for prop in item.properties},
        )
        for item in header.results
    ]
    return str(header.authserv_id).lower(), results


def trusted_authentication_results(
    headers: list[tuple[str, str]], *, authserv_id: str, from_domain: str
) -> TrustedResults:
    """Our MTA's verdict on `from_domain`, from the topmost Authentication-Results of `headers` (raw_headers)."""
    domain = _domain(from_domain)
    if not authserv_id:
        return TrustedResults(False, False, "no trusted MTA configured")
    topmost = next((value for name, value in headers if name == "authentication-results"), None)
    if topmost is None:
        return TrustedResults(False, False, "no Authentication-Results header")
    server, results = parse_authentication_results(topmost)
    if server != authserv_id.strip().lower():
        return TrustedResults(False, False, f"the topmost Authentication-Results is from {server or '(unreadable)'!r},"
                                            " not our MTA")
    failed = any(item.result in {"fail", "permerror"} and item.method in {"spf", "dkim", "dmarc"}
                 for item in results)
    for item in results:
        if item.result != "pass" or not domain:
            continue
        if item.method == "dkim":
            signer = _domain(item.properties.get("header.d", ""))
            if signer and aligned(signer, domain):
                return TrustedResults(True, failed, f"our MTA says dkim=pass for {signer}", signer=signer)
        elif item.method == "dmarc" and _domain(item.properties.get("header.from", "")) == domain:
            return TrustedResults(True, failed, f"our MTA says dmarc=pass for {domain}")
    return TrustedResults(False, failed, f"our MTA reports no aligned dkim or dmarc pass for {domain or '(none)'}")


def _authentication_results(headers: list[tuple[str, str]], *, domain: str, authserv_id: str,
                            announce_in: frozenset[str]) -> AuthVerdict:
    trusted = trusted_authentication_results(headers, authserv_id=authserv_id, from_domain=domain)
    if not trusted.passed:
        return AuthVerdict(False, AuthMethod.NONE, trusted.reason)
    if problem := _aligned_signature_problem(headers, domain=domain, announce_in=announce_in):
        return AuthVerdict(False, AuthMethod.NONE, f"{trusted.reason}, but {problem}")
    return AuthVerdict(True, AuthMethod.AUTHENTICATION_RESULTS, trusted.reason)
