"""Who really wrote a message a mailing list re-sent under its own From (DMARC "From munging"). Pure.

Google Groups and Mailman rewrite `From: Some One <one@example.org>` into
`From: "'Some One' via Listname" <list@lists.example.com>` so that the list's copy passes DMARC; the author is
then found in X-Original-From (Google Groups), X-MailFrom (Mailman 3), or in Reply-To or Cc (Mailman's
`dmarc_moderation_action: munge_from` puts it in one of them). Only a From that has the shape of such a rewrite
is replaced, and Reply-To or Cc only count when their display name is the one the list wrote before "via".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import getaddresses

_VIA_RE = re.compile(r"^\s*['\"]*(?P<name>.+?)['\"]*\s+via\s+\S", re.IGNORECASE)
_MAILTO_RE = re.compile(r"<mailto:([^>?]+)", re.IGNORECASE)
_QUOTES = "'\" "


@dataclass(frozen=True, slots=True)
class Author:
    name: str
    address: str
    header: str  # where it was found


def _addresses(value: str | None) -> list[tuple[str, str]]:
    if not value:
        return []
    try:
        pairs = getaddresses([value])
    except RecursionError:  # comments nested deeper than the parser can recurse
        return []
    return [(name.strip(_QUOTES), address.strip().lower()) for name, address in pairs if "@" in address]


def _same_name(left: str, right: str) -> bool:
    return bool(left) and left.strip(_QUOTES).casefold() == right.strip(_QUOTES).casefold()


def _list_addresses(header: Callable[[str], str | None]) -> set[str]:
    found = {match.lower() for match in _MAILTO_RE.findall(header("List-Post") or "")}
    list_id = header("List-Id") or ""
    match = re.search(r"<([^<>@\s]+@[^<>\s]+)>", list_id)
    if match:
        found.add(match.group(1).lower())
    return found


def rewritten_by_list(from_name: str, from_address: str, header: Callable[[str], str | None]) -> str | None:
    """The author's name the list wrote before "via" (or "" when the From is the list's own address), or None
    when the From does not look rewritten by a list."""
    via = _VIA_RE.match(from_name)
    if via is not None:
        return via.group("name").strip(_QUOTES)
    if from_address and from_address in _list_addresses(header):
        return ""
    return None


def original_author(from_name: str, from_address: str, header: Callable[[str], str | None]) -> Author | None:
    """The real author of a list-rewritten message, or None when the From is already the author (or the headers
    disagree about who it is: X-Original-From and Reply-To naming different people)."""
    via_name = rewritten_by_list(from_name, from_address, header)
    if via_name is None:
        return None
    original = _addresses(header("X-Original-From"))
    reply_to = _addresses(header("Reply-To"))
    if original:
        name, address = original[0]
        if reply_to and all(candidate != address for _, candidate in reply_to):
            return None
        return None if address == from_address else Author(name, address, "X-Original-From")
    mail_from = _addresses(header("X-MailFrom"))
    if mail_from and mail_from[0][1] != from_address:
        return Author(via_name, mail_from[0][1], "X-MailFrom")
    for name_header in ("Reply-To", "Cc"):
        for name, address in _addresses(header(name_header)):
            if address != from_address and _same_name(name, via_name):
                return Author(name, address, name_header)
    return None
