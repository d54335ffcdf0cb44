"""The envelope of a message that arrived without SMTP (a hosted IMAP mailbox), rebuilt from its headers. Pure.

The MTA that delivered the mail into the mailbox records the envelope in trace headers: Delivered-To (Postfix,
qmail, Dovecot LDA), X-Original-To (Postfix: the recipient before alias expansion), Envelope-To and
X-Envelope-To (Exim, some hosters). A hosted mailbox often receives a whole domain through an alias, so the
innermost header may name the mailbox itself rather than the forum address: the first header that names an
address on our domain wins. To and Cc are the last resort (Bcc'd mail cannot be routed from them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.utils import getaddresses, parseaddr

from qaflow_mail.mail.parse import ParsedMail

# In order of trust: each names the envelope recipient; the first that yields an address on our domain is used.
ENVELOPE_RECIPIENT_HEADERS: tuple[tuple[str, ...], ...] = (
    ("Delivered-To",),
    ("X-Original-To",),
    ("Envelope-To", "X-Envelope-To"),
)
_NULL_PATH_RE = re.compile(r"<\s*>")


def _addresses(values: Iterable[str]) -> list[str]:
    return [addr.strip().lower() for _name, addr in getaddresses(list(values)) if "@" in addr]


def _unique(addresses: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(addresses))


def _on_domain(address: str, domain: str) -> bool:
    return address.rpartition("@")[2].rstrip(".") == domain


def recipients_from_headers(parsed: ParsedMail, *, domain: str) -> list[str]:
    """The envelope recipients on `domain` (lowercased, deduplicated, in header order).

    From Delivered-To, else X-Original-To, else Envelope-To/X-Envelope-To, else To and Cc. When no header names
    an address on our domain, the addresses of the first header that names any are returned instead, so the
    pipeline refuses them as unknown recipients and records why; [] only when the message names nobody at all.
    """
    ours = domain.strip().lower().rstrip(".")
    sources = [_addresses(value for name in names for value in parsed.header_all(name))
               for names in ENVELOPE_RECIPIENT_HEADERS]
    sources.append([*parsed.to, *parsed.cc])
    for addresses in sources:
        # written as our domain exactly (a trailing root dot dropped), so address classification recognises it
        on_domain = [f"{a.rpartition('@')[0]}@{ours}" for a in addresses if _on_domain(a, ours)]
        if on_domain:
            return _unique(on_domain)
    return next((_unique(a) for a in sources if a), [])


def sender_from_headers(parsed: ParsedMail) -> str:
    """The envelope sender: the topmost Return-Path ("" for the null path <>), else the From address."""
    values = parsed.header_all("Return-Path")
    if values:
        value = values[0].strip()
        if _NULL_PATH_RE.fullmatch(value):
            return ""
        address = parseaddr(value)[1].strip()
        if "@" in address:
            return address
    return parsed.from_address
