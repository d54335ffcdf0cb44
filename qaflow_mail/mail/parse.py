"""Raw bytes to ParsedMail: headers decoded, text and HTML parts chosen, attachments listed. Pure.

Never raises on malformed mail: charsets come from `charsets`, broken base64 is repaired,
parts that cannot be read are counted in `undecodable_parts`.
"""

from __future__ import annotations

import email
import email.policy
import functools
import hashlib
import re
from dataclasses import dataclass, field
from email.feedparser import FeedParser
from email.headerregistry import BaseHeader
from email.message import Message
from email.policy import Policy
from email.utils import getaddresses, parseaddr

from qaflow_mail.mail.author import original_author
from qaflow_mail.mail.charsets import decode_base64, decode_bytes, decode_header, recover_8bit, storable, storable_line

_MSGID_RE = re.compile(r"<([^<>\s]+)>")
_MAX_DEPTH = 40  # MIME nesting deeper than this is not walked (a parser bomb, not a mail)

# The standard library's structured header parser (Content-Type, Content-Disposition, Date,
# addresses) copies the rest of the value at every token, quadratic in the header's length
# (CPython gh-136063), and recurses once per nested comment. It only ever sees a value's
# first 2 KB; the rest is dropped. Real headers of those kinds are shorter (a 255-byte file
# name, percent-encoded by RFC 2231, takes about 1 KB); a long address list is shown
# through decode_header instead (see _display_headers), and `to`/`cc` read every address.
_MAX_PARSED_HEADER = 2048


# Each part's Content-Type is asked for about eight times while a mail is parsed, so the last
# few parsed values are kept (a parse tree weighs up to a few MB for a hostile 2 KB value).
@functools.lru_cache(maxsize=8)
def _parsed_header(name: str, value: str) -> BaseHeader:
    """policy.default's header object for a value; deeply nested comments read as an empty value."""
    try:
        return email.policy.default.header_fetch_parse(name, value)  # type: ignore[no-any-return]
    except RecursionError:  # comments nested deeper than the parser can recurse
        return email.policy.default.header_fetch_parse(name, "")  # type: ignore[no-any-return]


# The Message methods read these back as text only (get_content_type, get_param, get_filename
# and get_boundary split the string again), so they skip the structured parser altogether:
# a mail of many parts would otherwise pay for it several times per part.
_TEXT_ONLY_HEADERS = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})


class _BoundedPolicy(email.policy.EmailPolicy):
    """policy.default with header values cut to _MAX_PARSED_HEADER before the structured parser reads them."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        if isinstance(value, BaseHeader):
            return value
        value = value[:_MAX_PARSED_HEADER]
        if name.lower() in _TEXT_ONLY_HEADERS:
            return value.replace("\r", "").replace("\n", "")
        return _parsed_header(name, value)


_POLICY = _BoundedPolicy()

# Header names whose value is a list of addresses: the policy re-quotes display names there.
_ADDRESS_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc", "resent-sender"}
)
_IGNORED_TYPES = frozenset(
    {"application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature"}
)
_PLAIN_LIKE = frozenset({"text/plain", "text/markdown", "text/x-markdown"})
_ENRICHED = frozenset({"text/enriched", "text/richtext"})
_DEFAULT_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
    "message/rfc822": ".eml",
    "text/calendar": ".ics",
    "text/plain": ".txt",
    "text/html": ".html",
}


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
    enriched: str | None = None  # a text/enriched or text/richtext body, decoded, markup kept
    undecodable_parts: int = 0  # body parts whose bytes no charset could read without loss
    guessed_charset_parts: int = 0  # body parts whose declared charset was missing or wrong
    list_from: str = ""  # the list address a mailing list put in From when from_address was recovered (mail.author)

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


def unfold(value: str) -> str:
    return re.sub(r"\s*[\r\n]+\s*", " ", value).strip()


def _header_text(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:  # malformed header the policy cannot parse: fall back to the raw value
        return _raw_header(msg, name)
    if value is None:
        return None
    return unfold(str(value))


def _raw_header(msg: Message, name: str, fallback: str | None = None) -> str | None:
    """The first raw value of a header, unfolded, 8-bit bytes recovered, encoded words kept."""
    lname = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == lname:
            return unfold(recover_8bit(str(value), fallback))
    return None


# Address headers are shown through the structured parser (which re-quotes display names)
# when they are short, and for the first 16 of them only; the others (a long list, or a mail
# of hundreds of Cc lines, each costly to parse) are shown through decode_header.
_MAX_PARSED_ADDRESS_HEADERS = 16
_MAX_PARSED_ADDRESS_CHARS = 1024


def _display_headers(msg: Message, fallback: str | None) -> tuple[tuple[str, str], ...]:
    shown: list[tuple[str, str]] = []
    parsed = 0
    for key, raw in msg.raw_items():
        value = str(raw)
        if (
            key.lower() in _ADDRESS_HEADERS
            and value.isascii()
            and len(value) <= _MAX_PARSED_ADDRESS_CHARS
            and parsed < _MAX_PARSED_ADDRESS_HEADERS
        ):
            parsed += 1
            try:
                shown.append((key, unfold(str(msg.policy.header_fetch_parse(key, value)))))
                continue
            except Exception:  # malformed header the policy cannot parse
                pass
        shown.append((key, unfold(decode_header(unfold(value), fallback=fallback))))
    return tuple((key, storable(value)) for key, value in shown)


# --- bodies -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Bodies:
    texts: list[str] = field(default_factory=list)
    html: str | None = None
    enriched: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    undecodable: int = 0
    guessed: int = 0


def _payload_bytes(part: Message) -> tuple[bytes, bool]:
    """The decoded payload of a leaf part and whether it decoded cleanly."""
    try:
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte == "base64":
            raw = part.get_payload(decode=False)
            if isinstance(raw, str):
                return decode_base64(raw)
        # 7bit/8bit/binary come back as the original bytes; QP and uuencode are decoded leniently.
        payload = part.get_payload(decode=True)
    except Exception:  # a payload the email package cannot hand back
        return b"", False
    return (payload, True) if isinstance(payload, bytes) else (b"", False)


def _decode_text(part: Message, bodies: _Bodies) -> str:
    payload, clean = _payload_bytes(part)
    try:
        charset = part.get_content_charset()
    except Exception:  # unparseable Content-Type parameters
        charset = None
    decoded = decode_bytes(payload, charset)
    if decoded.lossy or not clean:
        bodies.undecodable += 1
    elif decoded.guessed:
        bodies.guessed += 1
    text = storable(decoded.text.replace("\r\n", "\n").replace("\r", "\n"))
    if _param(part, "format") == "flowed":
        text = unflow(text, delsp=_param(part, "delsp") == "yes")
    return text


def _param(part: Message, name: str) -> str:
    try:
        return str(part.get_param(name, "")).strip().lower()
    except Exception:  # unparseable Content-Type parameters
        return ""


def unflow(text: str, *, delsp: bool = False) -> str:
    """Undo RFC 3676 format=flowed: join soft-broken lines, remove space-stuffing. Quote depth is kept."""
    out: list[str] = []
    current: str | None = None
    current_depth = -1
    for line in text.split("\n"):
        if line == "-- ":  # the signature separator is never flowed
            if current is not None:
                out.append(current)
            out.append(line)
            current, current_depth = None, -1
            continue
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]
        if current is not None and depth != current_depth:
            out.append(current)
            current = None
        prefix = ">" * depth + (" " if depth else "")
        current = prefix + content if current is None else current + content
        current_depth = depth
        if content.endswith(" ") and content != " ":
            if delsp:
                current = current[:-1]
            continue
        out.append(current)
        current, current_depth = None, -1
    if current is not None:
        out.append(current)
    return "\n".join(out)


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:  # broken RFC 2231 parameters
        name = None
    if not name:
        return None
    return storable_line(decode_header(unfold(str(name)))).strip() or None


def _content_id(part: Message) -> str | None:
    raw = _raw_header(part, "Content-ID")
    if not raw:
        return None
    found = storable_line(normalize_message_id(raw) or raw.strip().strip("<>").strip())
    return found[:MAX_STORED_ID] or None


def _default_name(ctype: str, base: str) -> str:
    return base + _DEFAULT_EXTENSIONS.get(ctype, "")


def _attachment(part: Message, ctype: str, content: bytes, *, inline: bool, base: str = "attachment") -> Attachment:
    return Attachment(
        filename=_filename(part) or _default_name(ctype, base),
        content_type=ctype,
        content=content,
        content_id=_content_id(part),
        inline=inline,
    )


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:  # malformed Content-Disposition
        return ""


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # malformed Content-Type
        return "application/octet-stream"


def _embedded_message_bytes(part: Message) -> bytes:
    try:
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            return bytes(inner[0].as_bytes(policy=email.policy.compat32))
        if isinstance(inner, str):
            return inner.encode("utf-8", errors="surrogateescape")
    except Exception:  # an embedded message the generator cannot re-serialise
        pass
    return b""


def _walk(part: Message, bodies: _Bodies, depth: int, in_alternative: bool) -> None:
    if depth > _MAX_DEPTH:
        return
    ctype = _content_type(part)
    disposition = _disposition(part)
    if ctype == "message/rfc822" and depth == 0 and part.is_multipart():
        # The whole mail is one forwarded message: its content is the content.
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            _walk(inner[0], bodies, depth + 1, in_alternative)
            return
    if ctype.startswith("message/") and ctype != "message/partial":
        bodies.attachments.append(_attachment(part, ctype, _embedded_message_bytes(part), inline=False, base="message"))
        return
    if part.is_multipart():
        children = part.get_payload()
        if not isinstance(children, list):
            return
        alternative = ctype == "multipart/alternative"
        for child in children:
            if isinstance(child, Message):
                _walk(child, bodies, depth + 1, alternative or in_alternative)
        return
    if ctype in _IGNORED_TYPES:
        return
    if ctype.startswith("multipart/"):
        # A multipart whose boundary never appears: the email package leaves the raw body as text.
        if not bodies.texts:
            bodies.texts.append(_decode_text(part, bodies))
        return
    filename = _filename(part)
    is_attachment = disposition == "attachment"
    if ctype in _PLAIN_LIKE and not is_attachment and not (filename and bodies.texts):
        if not (in_alternative and bodies.texts):
            bodies.texts.append(_decode_text(part, bodies))
        return
    if ctype == "text/html" and not is_attachment and bodies.html is None and not filename:
        bodies.html = _decode_text(part, bodies)
        return
    if ctype in _ENRICHED and not is_attachment and bodies.enriched is None:
        bodies.enriched = _decode_text(part, bodies)
        return
    if ctype == "text/html" and not is_attachment and in_alternative:
        return  # a second HTML alternative adds nothing
    payload, _clean = _payload_bytes(part)
    inline = disposition == "inline" or (disposition == "" and ctype.startswith("image/"))
    base = "image" if ctype.startswith("image/") else "attachment"
    bodies.attachments.append(_attachment(part, ctype, payload, inline=inline, base=base))


def _fallback_charset(msg: Message) -> str | None:
    """The charset of the first text part: the best guess for raw 8-bit bytes in headers."""
    for part in msg.walk():
        if _content_type(part).startswith("text/"):
            try:
                charset = part.get_content_charset()
            except Exception:  # unparseable parameters
                charset = None
            if charset:
                return str(charset)
    return None


def _addresses(msg: Message, name: str, fallback: str | None) -> tuple[str, ...]:
    lname = name.lower()
    values = [recover_8bit(str(v), fallback) for k, v in msg.raw_items() if k.lower() == lname]
    try:
        pairs = getaddresses(values)
    except RecursionError:  # comments nested deeper than the parser can recurse
        return ()
    found = (storable_line(addr).lower() for _, addr in pairs if "@" in addr)
    return tuple(addr for addr in found if len(addr) <= MAX_ADDRESS)


def _parse_address(value: str) -> tuple[str, str]:
    try:
        return parseaddr(value)
    except RecursionError:  # comments nested deeper than the parser can recurse
        return "", ""


_NAME_ADDR_RE = re.compile(r"^(.*)<([^<>@\s]+@[^<>\s]+)>\s*$")


def _sender(msg: Message, fallback: str | None) -> tuple[str, str]:
    raw = _raw_header(msg, "From", fallback) or ""
    name, addr = _parse_address(raw)
    if not addr and raw:
        name, addr = _parse_address(decode_header(raw, fallback=fallback))
    if "@" not in addr and (bracketed := _NAME_ADDR_RE.match(raw)):
        # A display name with an unquoted comma ('Marston, John' via List <list@…>) reads as two addresses.
        name, addr = bracketed.group(1).strip(), bracketed.group(2)
    name = storable_line(unfold(decode_header(name, fallback=fallback))).strip() if name else ""
    addr = storable_line(addr).lower()
    return name, (addr if "@" in addr and len(addr) <= MAX_ADDRESS else "")


_LEADING_BLANK_LINES_RE = re.compile(rb"\A(?:[ \t]*\r?\n)+")

# Column lengths of what a message's ids and addresses are stored in (posts.message_id, users.email).
MAX_STORED_ID = 255
MAX_ADDRESS = 320


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    lname = name.lower()
    return next((value for key, value in headers if key.lower() == lname), None)


def _storable_message_id(mid: str | None) -> str | None:
    """The id as stored: an id too long for its column, or with characters no column holds, becomes a stable
    stand-in made from its hash (so a second delivery is still recognised)."""
    if mid is None:
        return None
    clean = storable_line(mid)
    if clean == mid and len(mid) <= MAX_STORED_ID:
        return mid
    return f"{hashlib.sha256(mid.encode('utf-8', 'surrogatepass')).hexdigest()[:40]}@long-id.invalid"


# What the email package's parser reads at a time.
_FEED_CHARS = 8192


def message_from_bytes(raw: bytes, policy: Policy) -> Message:
    """`email.message_from_bytes(raw, policy=policy)`, the same tree, without its two whole-message copies.

    The standard library decodes all the bytes into one str, wraps that in a StringIO (4 bytes a character once
    read) and feeds the parser 8192 characters at a time from it: 5 times the message's size before the parser
    has seen a line. The same pieces are decoded here one at a time (ASCII with surrogateescape: one character a
    byte, so a piece of bytes is the piece of text the StringIO would have given)."""
    parser = FeedParser(policy=policy)
    view = memoryview(raw)
    for start in range(0, len(raw), _FEED_CHARS):
        parser.feed(str(view[start:start + _FEED_CHARS], "ascii", "surrogateescape"))
    return parser.close()


def parse_message(raw: bytes) -> ParsedMail:
    digest = hashlib.sha256(raw).hexdigest()
    # Blank lines before the first header would make every header part of the body.
    msg = message_from_bytes(_LEADING_BLANK_LINES_RE.sub(b"", raw), _POLICY)
    fallback = _fallback_charset(msg)
    headers = _display_headers(msg, fallback)
    mid = _storable_message_id(normalize_message_id(_raw_header(msg, "Message-ID")))
    synthesized = mid is None
    if mid is None:
        mid = f"{digest[:32]}@sha256.invalid"
    from_name, from_addr = _sender(msg, fallback)
    list_from = ""
    author = original_author(from_name, from_addr, lambda name: _first(headers, name))
    if author is not None and len(author.address) <= MAX_ADDRESS:
        list_from, from_name, from_addr = from_addr, storable_line(author.name), storable_line(author.address)
    bodies = _Bodies()
    _walk(msg, bodies, 0, False)
    subject = _raw_header(msg, "Subject", fallback)
    return ParsedMail(
        message_id=mid,
        message_id_synthesized=synthesized,
        in_reply_to=message_ids(_raw_header(msg, "In-Reply-To")),
        references=message_ids(_raw_header(msg, "References")),
        from_address=from_addr,
        from_name=from_name,
        subject=storable_line(unfold(decode_header(subject, fallback=fallback))) if subject else "",
        date=_header_text(msg, "Date"),
        to=_addresses(msg, "To", fallback),
        cc=_addresses(msg, "Cc", fallback),
        text="\n\n".join(bodies.texts) if bodies.texts else None,
        html=bodies.html,
        attachments=tuple(bodies.attachments),
        headers=headers,
        sha256=digest,
        size=len(raw),
        defects=tuple(type(d).__name__ for d in msg.defects),
        enriched=bodies.enriched,
        undecodable_parts=bodies.undecodable,
        guessed_charset_parts=bodies.guessed,
        list_from=list_from,
    )
