"""Raw bytes to ParsedMail: headers decoded, text and HTML parts chosen, attachments listed. Pure."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr

_MSGID_RE = re.compile(r"<([^<>\s]+)>")


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True, slots=True)
class ParsedMail:
    message_id: str  # normalised, without <>; synthesised from sha256 when missing
    message_id_synthesized: bool
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    from_address: str  # lowercased addr-spec, "" when absent or unparseable
    from_name: str
    subject: str
    date: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    text: str | None  # the chosen text/plain body, decoded
    html: str | None  # the raw (unsanitised) HTML body, decoded
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]  # every header, decoded and unfolded, in order
    sha256: str
    size: int
    defects: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]


def normalize_message_id(value: str | None) -> str | None:
    """The first <id> in a header value, without brackets; a bare id-like token when there are no brackets."""
    if not value:
        return None
    match = _MSGID_RE.search(value)
    if match:
        return match.group(1).strip()
    token = value.strip().split()[0] if value.strip() else ""
    if "@" in token and len(token) <= 250:
        return token.strip("<>")
    return None


def message_ids(value: str | None) -> tuple[str, ...]:
    """Every <id> in a header value (In-Reply-To, References), in order, without duplicates."""
    if not value:
        return ()
    found = [m.strip() for m in _MSGID_RE.findall(value)]
    if not found:
        single = normalize_message_id(value)
        found = [single] if single else []
    seen: dict[str, None] = {}
    for item in found:
        if item and len(item) <= 250:
            seen.setdefault(item, None)
    return tuple(seen)


def _header_text(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:  # malformed header the policy cannot parse
        raw = msg.get_all(name, failobj=[]) if hasattr(msg, "get_all") else []
        value = str(raw[0]) if raw else None
    if value is None:
        return None
    return unfold(str(value))


def unfold(value: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", value).strip()


def _decode_part(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    assert isinstance(payload, bytes)
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return payload.decode("utf-8", errors="replace")


def _walk_bodies(msg: Message) -> tuple[str | None, str | None, list[Attachment]]:
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disposition = (part.get_content_disposition() or "").lower()
        filename = part.get_filename()
        if disposition == "attachment" or (filename and ctype not in {"text/plain", "text/html"}):
            payload = part.get_payload(decode=True)
            attachments.append(
                Attachment(
                    filename=filename or "attachment",
                    content_type=ctype,
                    content=payload if isinstance(payload, bytes) else b"",
                    content_id=normalize_message_id(part.get("Content-ID")),
                    inline=disposition == "inline",
                )
            )
            continue
        if ctype == "text/plain" and text is None:
            text = _decode_part(part)
        elif ctype == "text/html" and html is None:
            html = _decode_part(part)
        elif ctype.startswith("image/"):
            payload = part.get_payload(decode=True)
            attachments.append(
                Attachment(
                    filename=filename or "image",
                    content_type=ctype,
                    content=payload if isinstance(payload, bytes) else b"",
                    content_id=normalize_message_id(part.get("Content-ID")),
                    inline=True,
                )
            )
    return text, html, attachments


def _addresses(msg: Message, name: str) -> tuple[str, ...]:
    values = [str(v) for v in msg.get_all(name, failobj=[])]
    return tuple(addr.lower() for _, addr in getaddresses(values) if "@" in addr)


def parse_message(raw: bytes) -> ParsedMail:
    digest = hashlib.sha256(raw).hexdigest()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    headers: list[tuple[str, str]] = []
    for key, value in msg.raw_items():
        try:
            decoded = str(msg.policy.header_fetch_parse(key, value))
        except Exception:
            decoded = str(value)
        headers.append((key, unfold(decoded)))
    mid = normalize_message_id(_header_text(msg, "Message-ID"))
    synthesized = mid is None
    if mid is None:
        mid = f"{digest[:32]}@sha256.invalid"
    from_name, from_addr = parseaddr(_header_text(msg, "From") or "")
    text, html, attachments = _walk_bodies(msg)
    return ParsedMail(
        message_id=mid,
        message_id_synthesized=synthesized,
        in_reply_to=message_ids(_header_text(msg, "In-Reply-To")),
        references=message_ids(_header_text(msg, "References")),
        from_address=from_addr.lower() if "@" in from_addr else "",
        from_name=from_name,
        subject=_header_text(msg, "Subject") or "",
        date=_header_text(msg, "Date"),
        to=_addresses(msg, "To"),
        cc=_addresses(msg, "Cc"),
        text=text,
        html=html,
        attachments=tuple(attachments),
        headers=tuple(headers),
        sha256=digest,
        size=len(raw),
        defects=tuple(type(d).__name__ for d in msg.defects),
    )
