"""Is an announcement really from the domain in its From? A verified, aligned DKIM signature (dkimpy), or the
verdict our own MTA wrote in Authentication-Results (RFC 8601). Pure apart from the DNS lookup `dnsfunc` does.

Alignment is DMARC's relaxed mode approximated without the Public Suffix List: the signing domain (d=) and the
From domain are equal, or one is a subdomain of the other, and d= has at least two labels (so a signature by a
bare TLD never counts).

Only the topmost Authentication-Results header is read, and only when its authserv-id is the one configured for
our own MTA: that MTA prepends its header, so anything further down was written by someone else (possibly the
sender). The MTA should also remove headers claiming its authserv-id from incoming mail (RFC 8601 §5).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import dkim

from qaflow_mail.mail.parse import ParsedMail

# dkimpy's resolver signature: (b"selector._domainkey.example.org.", timeout=5) -> TXT value or None.
DnsFunc = Callable[..., bytes | None]

_COMMENT_RE = re.compile(r"\([^()]*\)")
_PAIR_RE = re.compile(r'([A-Za-z0-9][A-Za-z0-9._/-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;]+)')


class AuthMethod(StrEnum):
    DKIM = "dkim"
    AUTHENTICATION_RESULTS = "authentication-results"
    NONE = ""


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    passed: bool
    method: AuthMethod
    reason: str


def verify_announcer(
    raw: bytes,
    parsed: ParsedMail,
    *,
    from_domain: str,
    dnsfunc: DnsFunc | None,
    trusted_authserv_id: str,
) -> AuthVerdict:
    """Whether the message provably comes from `from_domain`, and how we know.

    `dnsfunc` answers dkimpy's TXT lookups; None uses dkimpy's resolver (real DNS, blocking: call this from a
    thread when the loop must stay responsive).
    """
    domain = _domain(from_domain)
    if not domain:
        return AuthVerdict(False, AuthMethod.NONE, "no From domain")
    if len(parsed.header_all("From")) != 1:
        return AuthVerdict(False, AuthMethod.NONE, "the message must have exactly one From header")
    reasons: list[str] = []
    if trusted_authserv_id:
        verdict = _authentication_results(parsed, domain=domain, authserv_id=trusted_authserv_id)
        if verdict.passed:
            return verdict
        reasons.append(verdict.reason)
    verdict = _dkim(raw, domain=domain, dnsfunc=dnsfunc)
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


def _dkim(raw: bytes, *, domain: str, dnsfunc: DnsFunc | None) -> AuthVerdict:
    count = sum(1 for line in _header_names(raw) if line == "dkim-signature")
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
        if not ok:
            reasons.append(f"the DKIM signature by {signer or '(unknown)'} does not verify ({problem})")
        elif b"l" in (checker.signature_fields or {}):
            # A body length limit lets anyone append text below the signed part.
            reasons.append(f"the DKIM signature by {signer} covers only part of the body (l=)")
        elif not aligned(signer, domain):
            reasons.append(f"the DKIM signature by {signer} is not aligned with {domain}")
        else:
            return AuthVerdict(True, AuthMethod.DKIM, f"the DKIM signature by {signer} verifies")
    return AuthVerdict(False, AuthMethod.NONE, "; ".join(reasons))


def _header_names(raw: bytes) -> list[str]:
    """Lowercased header field names of the message head, in order (continuation lines skipped)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    names: list[str] = []
    for line in head.splitlines():
        if line[:1] in (b" ", b"\t") or b":" not in line:
            continue
        names.append(line.split(b":", 1)[0].strip().decode("ascii", "replace").lower())
    return names


@dataclass(frozen=True, slots=True)
class _Result:
    method: str
    result: str
    properties: dict[str, str]


def parse_authentication_results(value: str) -> tuple[str, list[_Result]]:
    """(authserv-id, results) of one Authentication-Results value; comments dropped, values unquoted."""
    text = value
    while True:
        stripped = _COMMENT_RE.sub(" ", text)
        if stripped == text:
            break
        text = stripped
    head, *clauses = text.split(";")
    words = head.split()
    authserv_id = words[0].lower() if words else ""
    results: list[_Result] = []
    for clause in clauses:
        pairs = [(key.lower(), _unquote(val)) for key, val in _PAIR_RE.findall(clause)]
        if not pairs:
            continue
        method, result = pairs[0]
        results.append(_Result(method.split("/", 1)[0], result.lower(), dict(pairs[1:])))
    return authserv_id, results


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _authentication_results(parsed: ParsedMail, *, domain: str, authserv_id: str) -> AuthVerdict:
    headers = parsed.header_all("Authentication-Results")
    if not headers:
        return AuthVerdict(False, AuthMethod.NONE, "no Authentication-Results header")
    server, results = parse_authentication_results(headers[0])
    if server != authserv_id.strip().lower():
        return AuthVerdict(False, AuthMethod.NONE, f"the topmost Authentication-Results is from {server!r}, "
                                                   "not our MTA")
    for item in results:
        if item.result != "pass":
            continue
        if item.method == "dkim":
            signer = item.properties.get("header.d") or item.properties.get("header.i", "").rpartition("@")[2]
            if signer and aligned(signer, domain):
                return AuthVerdict(True, AuthMethod.AUTHENTICATION_RESULTS, f"our MTA says dkim=pass for {signer}")
        elif item.method == "dmarc" and _domain(item.properties.get("header.from", "")) == domain:
            return AuthVerdict(True, AuthMethod.AUTHENTICATION_RESULTS, f"our MTA says dmarc=pass for {domain}")
    return AuthVerdict(False, AuthMethod.NONE, f"our MTA reports no aligned dkim or dmarc pass for {domain}")
