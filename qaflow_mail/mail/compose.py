"""Outgoing messages: headers, threading, List-* fields and MIME structure. Pure.

Every header value that may have come from an email (subjects, display names) is cleaned of control
characters before it reaches the message; non-ASCII text is RFC 2047 encoded and folded by the policy.
Message-IDs and List-* URLs are never RFC 2047 encoded: the stdlib policy would encode any unstructured
token longer than a line, which breaks threading and unsubscribe links, so those headers are folded at
spaces only.
"""

from __future__ import annotations

import email.policy
import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.charset import Charset
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import EmailPolicy, Policy
from types import MappingProxyType
from typing import Any

from qaflow_mail.mail.addresses import ATEXT

MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1, excluding CRLF
MAX_REFERENCES = 20
MAX_AUTHOR_CHARS = 64
LOOP_LOCAL_PART = "qaflow"
ONE_CLICK = "List-Unsubscribe=One-Click"

# Trojan-source style bidi overrides and isolates: they let a display name or subject render reversed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ATOM_CHARS_RE = re.compile(rf"[{ATEXT}.]+")
_MSG_ID_RE = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")  # printable ASCII except space, '<' and '>'
_URL_RE = re.compile(r"[!-;=?-~]+")
_HEADER_NAME_RE = re.compile(r"[!-9;-~]+")
_LIST_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")
_RESERVED_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "reply-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "x-loop",
    }
)
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class _VerbatimHeader(UnstructuredHeader, BaseHeader):
    """An ASCII header folded at spaces only: no RFC 2047 decoding on the way in or encoding on the way out."""

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        super().parse(value, kwds)
        kwds["decoded"] = " ".join(value.split())

    def fold(self, *, policy: Policy) -> str:
        max_len = policy.max_line_length or MAX_LINE_OCTETS
        lines: list[str] = []
        current = f"{self.name}:"
        for index, word in enumerate(str(self).split()):
            # The first word stays on the header's own line even when long: an empty first line confuses
            # some parsers, and the caller keeps every word well under 998 octets.
            if index and len(current) + 1 + len(word) > max_len:
                lines.append(current)
                current = ""
            current += " " + word
        lines.append(current)
        return policy.linesep.join(lines) + policy.linesep


def _build_policy() -> EmailPolicy[EmailMessage]:
    registry = HeaderRegistry()
    for name in (
        "message-id",
        "in-reply-to",
        "references",
        "list-id",
        "list-post",
        "list-archive",
        "list-help",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "x-loop",
    ):
        registry.map_to_type(name, _VerbatimHeader)
    return email.policy.SMTP.clone(header_factory=registry)


POLICY = _build_policy()


@dataclass(frozen=True, slots=True)
class ListHeaders:
    """RFC 2369 / 2919 / 8058 list fields. Build ``list_id`` with ``list_id_value``.

    ``post`` and ``unsubscribe_mailto`` are addresses or ``mailto:`` URLs; ``post=None`` emits
    ``List-Post: NO`` (RFC 2369 for lists nobody may post to, such as announcements).
    ``List-Unsubscribe-Post`` is emitted only when an HTTPS unsubscribe URL is given (RFC 8058).
    """

    list_id: str
    post: str | None
    archive: str | None
    unsubscribe_mailto: str | None
    unsubscribe_https: str | None
    help: str | None = None


def clean_header_text(value: str) -> str:
    """One line of text safe for a header: control, line-separator and bidi-override characters become
    spaces, runs of whitespace collapse, and lone surrogates become U+FFFD."""
    chars: list[str] = []
    for ch in value:
        category = unicodedata.category(ch)
        if category in {"Cc", "Zl", "Zp"} or ch in _BIDI_CONTROLS:
            chars.append(" ")
        elif category == "Cs":
            chars.append("\ufffd")
        else:
            chars.append(ch)
    return " ".join("".join(chars).split())


def via_display_name(author: str, site: str) -> str:
    """'<author> via <site>', the From display name of a post notification (cleaned, author shortened)."""
    author_clean = clean_header_text(author)
    site_clean = clean_header_text(site)
    if len(author_clean) > MAX_AUTHOR_CHARS:
        author_clean = author_clean[: MAX_AUTHOR_CHARS - 1].rstrip() + "…"
    return f"{author_clean} via {site_clean}" if author_clean else site_clean


def list_id_value(name: str, *, slug: str, domain: str) -> str:
    """RFC 2919 List-Id: '"Name" <slug.domain>'; a non-ASCII name becomes RFC 2047 encoded words."""
    list_id = f"{slug}.{domain}".lower().rstrip(".")
    if not _LIST_ID_RE.fullmatch(list_id) or len(list_id) > 255:
        raise ValueError(f"not a valid list-id: {list_id!r}")
    phrase = clean_header_text(name)
    if not phrase:
        return f"<{list_id}>"
    if phrase.isascii():
        escaped = phrase.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{list_id}>'
    return f"{' '.join(_encoded_words(phrase))} <{list_id}>"


def loop_marker(domain: str) -> str:
    """The X-Loop value we stamp on everything we send; inbound mail carrying it is our own."""
    return f"{LOOP_LOCAL_PART}@{domain.lower()}"


def make_message_id(kind: str, ident: str, *, domain: str, salt: str) -> str:
    """A stable Message-ID (without <>) such as 'post-123.1a2b3c4d5e@forum.example'.

    The same inputs always give the same id, so one post has one Message-ID for every recipient. ``salt`` is the
    installation's ([site] message_id_salt, kept in the database): a recreated database mints other ids for its
    post 1, which clients that drop duplicate Message-IDs would otherwise lose. "" gives the unsalted ids.
    """
    for label, value in (("kind", kind), ("ident", ident)):
        if not _ATOM_CHARS_RE.fullmatch(value) or ".." in value or value.startswith("."):
            raise ValueError(f"message-id {label} must be dot-atom text, got {value!r}")
    host = domain.lower().rstrip(".")
    if not _ATOM_CHARS_RE.fullmatch(host):
        raise ValueError(f"not a domain: {domain!r}")
    salted = f"\x00{salt}" if salt else ""  # unsalted ids stay what they were before salts existed
    digest = hashlib.sha256(f"{kind}\x00{ident}\x00{host}{salted}".encode()).hexdigest()[:10]
    return f"{kind}-{ident}.{digest}@{host}"


def is_our_message_id(message_id: str, *, domain: str, salt: str) -> bool:
    """Whether `message_id` (without <>) is one make_message_id minted for `domain`: its digest is checked, so
    another program's id on the same domain (a person's own mail client) never passes."""
    left, _, host = message_id.rpartition("@")
    head, dot, digest = left.rpartition(".")
    if host.lower().rstrip(".") != domain.lower().rstrip(".") or not dot or len(digest) != 10:
        return False
    for index, char in enumerate(head):
        if char == "-" and 0 < index < len(head) - 1:
            try:
                if make_message_id(head[:index], head[index + 1 :], domain=domain, salt=salt) == message_id:
                    return True
            except ValueError:
                continue
    return False


def compose(
    *,
    from_name: str,
    from_address: str,
    to: str,
    subject: str,
    text: str,
    html: str | None,
    message_id: str,
    in_reply_to: str | None,
    references: Sequence[str],
    reply_to: str | None,
    list_headers: ListHeaders | None,
    extra_headers: Mapping[str, str] = _NO_HEADERS,
    date: datetime,
) -> EmailMessage:
    """A ready-to-send message: text/plain, or multipart/alternative with the text part first.

    Message-IDs are given without angle brackets (brackets around ``in_reply_to`` and ``references`` are
    tolerated; ``message_id`` must be bare). ``in_reply_to`` is appended to References when missing;
    References keeps the first id and the most recent ones (at most ``MAX_REFERENCES``). Ids that are not
    valid ASCII msg-ids (they may come from other people's mail) are dropped rather than emitted.
    ``extra_headers`` may add headers or override Precedence / Auto-Submitted / X-Auto-Response-Suppress
    (e.g. ``Auto-Submitted: auto-replied`` for a notice answering a message).
    """
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("date must be timezone-aware")
    if not _is_msg_id(message_id):
        raise ValueError(f"invalid Message-ID: {message_id!r}")
    sender = Address(display_name=clean_header_text(from_name), addr_spec=_addr_spec(from_address))
    domain = sender.domain

    msg = EmailMessage(policy=POLICY)
    msg["Date"] = date
    msg["From"] = sender
    msg["To"] = Address(addr_spec=_addr_spec(to))
    msg["Subject"] = clean_header_text(subject)
    msg["Message-ID"] = f"<{message_id}>"
    if isinstance(references, str):
        raise TypeError("references must be a sequence of Message-IDs, not a string")
    parent = _bare_msg_id(in_reply_to) if in_reply_to is not None else None
    if parent is not None and not _is_msg_id(parent):
        parent = None
    if parent is not None:
        msg["In-Reply-To"] = f"<{parent}>"
    chain = _reference_chain(references, parent)
    if chain:
        msg["References"] = " ".join(f"<{ref}>" for ref in chain)
    if reply_to is not None:
        msg["Reply-To"] = Address(addr_spec=_addr_spec(reply_to))
    if list_headers is not None:
        for name, value in _list_fields(list_headers):
            msg[name] = value

    automated = {
        "Precedence": "list",
        "Auto-Submitted": "auto-generated",
        "X-Auto-Response-Suppress": "All",
    }
    extras: dict[str, str] = {}
    for name, value in extra_headers.items():
        lowered = name.lower()
        if not _HEADER_NAME_RE.fullmatch(name) or lowered in _RESERVED_HEADERS or lowered.startswith("content-"):
            raise ValueError(f"header {name!r} cannot be set through extra_headers")
        if lowered.startswith("list-") and list_headers is not None:
            raise ValueError(f"header {name!r} comes from list_headers")
        canonical = next((key for key in automated if key.lower() == lowered), None)
        if canonical is not None:
            automated[canonical] = value
        else:
            extras[name] = value
    for name, value in automated.items():
        msg[name] = clean_header_text(value)
    msg["X-Loop"] = loop_marker(domain)
    for name, value in extras.items():
        msg[name] = clean_header_text(value)

    msg["MIME-Version"] = "1.0"
    _set_text(msg, text, "plain")
    if html is not None:
        _set_text(msg, html, "html", alternative=True)
        for part in msg.iter_parts():
            del part["MIME-Version"]  # the stdlib adds it to parts built as messages; it belongs on top only
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    """The wire form: CRLF line endings, every line at most 998 octets."""
    data = msg.as_bytes(policy=POLICY)
    longest = max(len(line) for line in data.split(b"\r\n"))
    if longest > MAX_LINE_OCTETS:
        raise ValueError(f"a line of {longest} octets exceeds the RFC 5322 limit")
    return data


def transfer_encoding(body: str) -> str:
    """7bit for plain ASCII; base64 when most characters are non-ASCII (Cyrillic, Greek, CJK, ...);
    quoted-printable otherwise, which keeps accented Latin text readable and avoids spam filters' penalty
    for base64-encoded Latin text.

    8bit is avoided on purpose: a relay without 8BITMIME would have to downgrade it, which breaks DKIM.
    """
    if body.isascii() and all(len(line) <= MAX_LINE_OCTETS for line in body.encode("ascii").splitlines()):
        return "7bit"
    visible = "".join(body.split())  # str.split() drops exactly the characters str.isspace() calls space
    non_ascii = len(visible) - len(visible.encode("ascii", "ignore"))
    return "base64" if non_ascii * 2 > len(visible) else "quoted-printable"


def _set_text(msg: EmailMessage, body: str, subtype: str, *, alternative: bool = False) -> None:
    # Lone surrogates (from undecodable input) cannot be encoded; "?" is the honest stand-in.
    normalized = body.encode("utf-8", errors="replace").decode("utf-8")
    if not normalized.endswith("\n"):
        normalized += "\n"
    encoding = transfer_encoding(normalized)
    if alternative:
        msg.add_alternative(normalized, subtype=subtype, charset="utf-8", cte=encoding)
    else:
        msg.set_content(normalized, subtype=subtype, charset="utf-8", cte=encoding)


def _list_fields(headers: ListHeaders) -> list[tuple[str, str]]:
    fields = [("List-Id", _checked_ascii(headers.list_id, "List-Id"))]
    if headers.help is not None:
        fields.append(("List-Help", f"<{_mailto_or_url(headers.help)}>"))
    fields.append(("List-Post", f"<{_mailto(headers.post)}>" if headers.post is not None else "NO"))
    if headers.archive is not None:
        fields.append(("List-Archive", f"<{_url(headers.archive)}>"))
    targets: list[str] = []
    if headers.unsubscribe_https is not None:
        targets.append(f"<{_https(headers.unsubscribe_https)}>")
    if headers.unsubscribe_mailto is not None:
        targets.append(f"<{_mailto(headers.unsubscribe_mailto)}>")
    if targets:
        fields.append(("List-Unsubscribe", ", ".join(targets)))
    if headers.unsubscribe_https is not None:
        fields.append(("List-Unsubscribe-Post", ONE_CLICK))
    return fields


def _reference_chain(references: Sequence[str], parent: str | None) -> list[str]:
    chain: list[str] = []
    for ref in (*references, *([parent] if parent else [])):
        ref_id = _bare_msg_id(ref)
        if _is_msg_id(ref_id) and ref_id not in chain:
            chain.append(ref_id)
    if parent is not None and chain and chain[-1] != parent:
        chain.remove(parent)
        chain.append(parent)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
    return chain


def _bare_msg_id(value: str) -> str:
    return value.strip().removeprefix("<").removesuffix(">")


def _is_msg_id(value: str) -> bool:
    return len(value) <= 250 and _MSG_ID_RE.fullmatch(value) is not None


def _addr_spec(value: str) -> str:
    address = value.strip()
    if not address.isascii() or any(ord(ch) < 0x21 or ch == "\x7f" for ch in address):
        raise ValueError(f"not a plain ASCII address: {value!r}")
    parsed = Address(addr_spec=address)  # raises ValueError on anything but one addr-spec
    if not parsed.username or not parsed.domain:
        raise ValueError(f"not an address: {value!r}")
    return parsed.addr_spec


def _checked_ascii(value: str, what: str) -> str:
    text = value.strip()
    if not text.isascii() or any(ord(ch) < 0x20 or ch == "\x7f" for ch in text) or len(text) > 900:
        raise ValueError(f"{what} must be printable ASCII: {value!r}")
    return text


def _url(value: str) -> str:
    url = value.strip()
    if len(url) > 900 or not _URL_RE.fullmatch(url):
        raise ValueError(f"not a header-safe URL: {value!r}")
    return url


def _https(value: str) -> str:
    url = _url(value)
    if not url.lower().startswith("https://"):
        raise ValueError(f"the one-click unsubscribe URL must be https (RFC 8058): {value!r}")
    return url


def _mailto(value: str) -> str:
    text = value.strip()
    if text.lower().startswith("mailto:"):
        return _url(text)
    return "mailto:" + _addr_spec(text)


def _mailto_or_url(value: str) -> str:
    text = value.strip()
    return _url(text) if "://" in text else _mailto(text)


def _encoded_words(phrase: str) -> list[str]:
    """RFC 2047 encoded words for ``phrase``, each within the 75-character limit."""
    charset = Charset("utf-8")
    words: list[str] = []
    chunk = ""
    for ch in phrase:
        if len((chunk + ch).encode("utf-8")) > 30:
            words.append(charset.header_encode(chunk))
            chunk = ""
        chunk += ch
    if chunk:
        words.append(charset.header_encode(chunk))
    return words
