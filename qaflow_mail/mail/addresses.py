"""One recipient address to a typed Destination, and the rules for category slugs. Pure.

Tokens are only split off here; the caller verifies them with ``mail.tokens``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TypeAlias

from qaflow_mail.mail.tokens import TokenKind, peek_kind


@dataclass(frozen=True, slots=True)
class NewTopic:
    category_slug: str


@dataclass(frozen=True, slots=True)
class Reply:
    token: str


@dataclass(frozen=True, slots=True)
class Announce:
    pass


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    token: str


@dataclass(frozen=True, slots=True)
class Bounce:
    token: str


@dataclass(frozen=True, slots=True)
class Confirm:
    token: str


@dataclass(frozen=True, slots=True)
class Postmaster:
    pass


@dataclass(frozen=True, slots=True)
class Request:
    category_slug: str


@dataclass(frozen=True, slots=True)
class Join:
    """<slug>-join@: asks to follow a category (announcements-join@: the site's announcements)."""

    category_slug: str


@dataclass(frozen=True, slots=True)
class Leave:
    category_slug: str


@dataclass(frozen=True, slots=True)
class ConfirmMembership:
    """confirm+<token>@ where the token confirms a join or leave (an announcement's confirmation is Confirm)."""

    token: str


@dataclass(frozen=True, slots=True)
class Moderate:
    """moderate+<token>@: a moderator's approve or reject of one held post."""

    token: str


@dataclass(frozen=True, slots=True)
class NoReply:
    """Our own From address (digests, notices): mail to it is answered with how to reply instead."""


Destination: TypeAlias = (
    NewTopic | Reply | Announce | Unsubscribe | Bounce | Confirm | Postmaster | Request | NoReply | Join | Leave
    | ConfirmMembership | Moderate
)

REPLY_PREFIX = "reply"
UNSUBSCRIBE_PREFIX = "unsubscribe"
BOUNCES_PREFIX = "bounces"
CONFIRM_PREFIX = "confirm"
MODERATE_PREFIX = "moderate"
POSTMASTER = "postmaster"
FROM_LOCAL_PART = "notifications"
TOKEN_SEPARATOR = "+"
REQUEST_SUFFIX = "-request"
UNSUBSCRIBE_SUFFIX = "-unsubscribe"
JOIN_SUFFIX = "-join"
LEAVE_SUFFIX = "-leave"

_TOKEN_ROUTES: dict[str, type[Reply | Unsubscribe | Bounce | Confirm | Moderate]] = {
    REPLY_PREFIX: Reply,
    UNSUBSCRIBE_PREFIX: Unsubscribe,
    BOUNCES_PREFIX: Bounce,
    CONFIRM_PREFIX: Confirm,
    MODERATE_PREFIX: Moderate,
}
_TOKEN_PREFIXES: dict[TokenKind, str] = {
    TokenKind.REPLY: REPLY_PREFIX,
    TokenKind.UNSUBSCRIBE: UNSUBSCRIBE_PREFIX,
    TokenKind.BOUNCE: BOUNCES_PREFIX,
    TokenKind.CONFIRM: CONFIRM_PREFIX,
    TokenKind.JOIN: CONFIRM_PREFIX,
    TokenKind.MODERATE: MODERATE_PREFIX,
}
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
# RFC 5322 3.2.3: the characters of an atom, and a dot-atom (a local part that needs no quoting).
ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
DOT_ATOM = rf"[{ATEXT}]+(?:\.[{ATEXT}]+)*"
_RESERVED = frozenset(
    {
        "announce",
        BOUNCES_PREFIX,
        REPLY_PREFIX,
        UNSUBSCRIBE_PREFIX,
        CONFIRM_PREFIX,
        MODERATE_PREFIX,
        POSTMASTER,
        FROM_LOCAL_PART,
        "abuse",
        "mailer-daemon",
        "noreply",
    }
)
_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_QUOTED_PAIR_RE = re.compile(r"\\(.)")


def reserved_local_parts(*, announce_local: str = "announce") -> frozenset[str]:
    """Local parts that are never category slugs (the announce address may be renamed in config)."""
    return _RESERVED | {announce_local.lower()}


def is_valid_slug(slug: str, *, announce_local: str = "announce") -> bool:
    """Whether ``slug`` may name a category, i.e. be used as ``<slug>@domain`` and ``<slug>-request@domain``."""
    return (
        _SLUG_RE.fullmatch(slug) is not None
        and slug not in reserved_local_parts(announce_local=announce_local)
        and not slug.endswith((REQUEST_SUFFIX, UNSUBSCRIBE_SUFFIX, JOIN_SUFFIX, LEAVE_SUFFIX))
    )


def token_address(kind: TokenKind, token: str, *, domain: str) -> str:
    """The address carrying ``token``: reply+, unsubscribe+, bounces+ (VERP envelope sender), confirm+ or
    moderate+."""
    local = f"{_TOKEN_PREFIXES[kind]}{TOKEN_SEPARATOR}{token}"
    if not token or len(local) > MAX_LOCAL_PART:
        raise ValueError(f"local part must be 1..{MAX_LOCAL_PART} octets: {local!r}")
    return f"{local}@{domain.lower()}"


def classify(
    address: str,
    *,
    domain: str,
    category_slugs: Collection[str],
    announce_local: str = "announce",
) -> Destination | None:
    """Where mail to ``address`` goes, or None when it is not one of ours.

    ``category_slugs`` holds the (lowercase) slugs of existing categories. Local parts are matched
    case-insensitively; tokens are returned lowercased, which they are designed to survive.
    """
    split = _split(address)
    if split is None:
        return None
    local, address_domain = split
    if address_domain is None:
        # RFC 5321 4.1.1.3: "RCPT TO:<Postmaster>" without a domain must be accepted.
        return Postmaster() if local == POSTMASTER else None
    if _normalize_domain(address_domain) != _normalize_domain(domain):
        return None
    if local == POSTMASTER:
        return Postmaster()
    if local == announce_local.lower():
        return Announce()
    if local == FROM_LOCAL_PART:
        return NoReply()
    prefix, separator, token = local.partition(TOKEN_SEPARATOR)
    if separator:
        route = _TOKEN_ROUTES.get(prefix)
        if route is Confirm and peek_kind(token) is TokenKind.JOIN:
            return ConfirmMembership(token)
        return route(token) if route is not None and token else None
    if local in _RESERVED:
        return None
    if local in category_slugs:
        return NewTopic(local)
    for suffix, kind in ((REQUEST_SUFFIX, Request), (JOIN_SUFFIX, Join), (LEAVE_SUFFIX, Leave)):
        if local.endswith(suffix):
            slug = local.removesuffix(suffix)
            return kind(slug) if slug in category_slugs else None
    return None


def _split(address: str) -> tuple[str, str | None] | None:
    """(lowercased local part, domain or None), or None when the address cannot be ours."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    local, at, domain = text.rpartition("@")
    if not at:
        local, domain = text, ""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = _QUOTED_PAIR_RE.sub(r"\1", local[1:-1])
    if not local or any(ch.isspace() or ord(ch) < 0x20 or ch in "<>@\x7f" for ch in local):
        return None
    if at and not domain:
        return None
    return local.lower(), (domain if at else None)


def _normalize_domain(domain: str) -> str:
    name = domain.strip().rstrip(".").lower()
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name
