"""A forwarded message told apart from a reply, and its forwarded part kept as a quoted block. Pure.

A reply's quoted history is trimmed (mail.quotes); a forward's is what the sender wants to show. A body is a
forward when its Subject says so ("Fwd:", "WG:", "TR:", "RV:", …) and a forward or original-message header
follows the sender's words, or when, whatever the Subject, a forward header line (Gmail's "---------- Forwarded
message ---------", Thunderbird's "-------- Forwarded Message --------", Apple's "Begin forwarded message:")
stands in the sender's own lines with nothing quoted before it. A Subject that starts with a reply prefix
("Re:", "AW:", …) is a reply, whatever follows. A message/rfc822 attachment is a forward too.

The forwarded part is shown collapsed: as text, "> "-quoted lines under a "Forwarded message" line; as HTML,
`<details><summary>Forwarded message</summary><blockquote>…</blockquote></details>`. Addresses in its header
lines are left out: a post is a public page.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from qaflow_mail.mail.parse import Attachment, parse_message
from qaflow_mail.mail.quotes import (
    EMBEDDED,
    FORWARD_INTRODUCTIONS,
    FORWARD_SEPARATORS,
    ORIGINAL_SEPARATORS,
    classify_line,
)
from qaflow_mail.mail.sanitize import html_to_text

__all__ = [
    "FORWARD_LABEL",
    "Forward",
    "attached_forwards",
    "forwarded_block_html",
    "forwarded_block_text",
    "is_forward_subject",
    "is_reply_subject",
    "public_forwarded_text",
    "public_html_headers",
    "split_forward",
]

FORWARD_LABEL = "Forwarded message"

_B = r"[ \t\u00a0]"
# Outlook and webmail prefixes in their languages: en Fwd/Fw, de WG, fr TR, es RV, pt ENC, nl Doorst, it I, pl PD,
# tr İLT, ru Пересл, ja 転送, zh 转发/轉寄, ko 전달, vi Chuyển tiếp, sv VB, fi VL.
_FORWARD_PREFIX_RE = re.compile(
    r"^\s*(?:\[[^\]\n]{1,80}\]\s*)?"
    r"(?:fwd?|wg|tr|rv|enc|doorst|i|pd|i̇lt|ilt|пересл|fw|vb|vl|転送|转发|轉寄|전달|chuyển tiếp)"
    r"\s*(?:\[[0-9]{1,3}\])?\s*[:：]",
    re.IGNORECASE,
)
_REPLY_PREFIX_RE = re.compile(
    r"^\s*(?:\[[^\]\n]{1,80}\]\s*)?"
    r"(?:re|aw|sv|antw|r|rif|odp|ynt|отв|res|vs|回复|答复|回覆|답장|trả lời)"
    r"\s*(?:\[[0-9]{1,3}\])?\s*[:：]",
    re.IGNORECASE,
)

_FORWARD_LINE_RE = re.compile(
    rf"^{_B}*\\?(?:-{{2,}}{_B}*(?:{'|'.join(FORWARD_SEPARATORS)}){_B}*-{{2,}}"
    rf"|(?:{'|'.join(FORWARD_INTRODUCTIONS)}){_B}*[:：]){_B}*$",
    re.IGNORECASE,
)
_ORIGINAL_LINE_RE = re.compile(
    rf"^{_B}*\\?-{{2,}}{_B}*(?:{'|'.join(ORIGINAL_SEPARATORS)}){_B}*-{{2,}}{_B}*$", re.IGNORECASE
)
_UNDERSCORES_RE = re.compile(rf"^{_B}*_{{10,}}{_B}*$")
# The first header line of a forwarded message's block, in the languages Outlook writes it in.
_FROM_LINE_RE = re.compile(
    rf"^{_B}*\*?(?:From|Von|De|Da|Van|Från|Fra|Od|Lähettäjä|Kimden|От|发件人|寄件者|差出人|보낸 사람|Từ)\*?{_B}*:",
    re.IGNORECASE,
)
_HEADER_LINE_RE = re.compile(r"^[ \t\u00a0*]*[^\W\d_][\w .-]{0,30}?\*?[ \t\u00a0]*[:：]")
_ADDRESS_IN_BRACKETS_RE = re.compile(r"[\[<(]\s*(?:mailto:)?[^\s<>\[\]()@]+@[^\s<>\[\]()]+\s*[\]>)]")
_BARE_ADDRESS_RE = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_MAX_HEADER_LINES = 12
_MAX_ATTACHED_FORWARDS = 5
_MAX_FORWARDED_CHARS = 100 * 1024


@dataclass(frozen=True, slots=True)
class Forward:
    own: str  # the forwarder's words, above the forwarded part
    forwarded: str  # the forwarded message: its header lines and body, the separator line left out


def is_forward_subject(subject: str) -> bool:
    return bool(_FORWARD_PREFIX_RE.match(subject or ""))


def is_reply_subject(subject: str) -> bool:
    return bool(_REPLY_PREFIX_RE.match(subject or ""))


def _is_outlook_header_block(lines: list[str], index: int) -> bool:
    """A "From:" line followed by at least two more header lines (Sent, To, Subject …) within a few lines."""
    if not _FROM_LINE_RE.match(lines[index]):
        return False
    window = lines[index + 1 : index + _MAX_HEADER_LINES]
    return sum(1 for line in window if _HEADER_LINE_RE.match(line)) >= 2


def _forward_start(lines: list[str], *, subject_says_forward: bool) -> tuple[int, int] | None:
    """(index of the separator line, index where the forwarded part starts), or None."""
    if not subject_says_forward and not any(len(line) <= 1000 and _FORWARD_LINE_RE.match(line) for line in lines):
        return None  # without a forward line only the Subject could make it a forward: no line need be classified
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(">") or (len(line) <= 1000 and classify_line(line) == EMBEDDED
                                         and not _FORWARD_LINE_RE.match(line) and not _ORIGINAL_LINE_RE.match(line)):
            return None  # something quoted, or a reply's "On … wrote:", comes first: a reply
        if len(line) > 1000:
            continue
        if _FORWARD_LINE_RE.match(line):
            return index, index + 1
        if not subject_says_forward:
            continue
        if _ORIGINAL_LINE_RE.match(line):
            return index, index + 1
        if _UNDERSCORES_RE.match(line) and index + 1 < len(lines) and _is_outlook_header_block(lines, index + 1):
            return index, index + 1
        if _is_outlook_header_block(lines, index):
            return index, index
    return None


def split_forward(text: str, subject: str = "") -> Forward | None:
    """The forwarder's words and the forwarded part of a body, or None when the body is not a forward."""
    if not text or is_reply_subject(subject):
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    found = _forward_start(lines, subject_says_forward=is_forward_subject(subject))
    if found is None:
        return None
    separator, start = found
    forwarded = "\n".join(lines[start:]).strip("\n")
    if not forwarded.strip():
        return None
    return Forward(own="\n".join(lines[:separator]).strip(), forwarded=forwarded[:_MAX_FORWARDED_CHARS])


_MESSAGE_ID_LINE_RE = re.compile(r"^[ \t]*Message-ID[ \t]*:", re.IGNORECASE)
_LEFTOVER_BRACKETS_RE = re.compile(r"<[ \t]*$|^[ \t]*>|(?<=\(address hidden\))>")


def _without_addresses(line: str) -> str:
    line = _BARE_ADDRESS_RE.sub("(address hidden)", _ADDRESS_IN_BRACKETS_RE.sub("", line))
    return re.sub(r"[ \t]{2,}", " ", _LEFTOVER_BRACKETS_RE.sub("", line)).rstrip()


def _public_header_lines(forwarded: str) -> str:
    """The forwarded part with the addresses of its leading header lines left out."""
    lines = forwarded.split("\n")
    index = 0
    while index < len(lines) and index < _MAX_HEADER_LINES and not lines[index].strip():
        index += 1
    while index < len(lines) and index < 2 * _MAX_HEADER_LINES and lines[index].strip():
        lines[index] = "" if _MESSAGE_ID_LINE_RE.match(lines[index]) else _without_addresses(lines[index])
        index += 1
    return "\n".join(line for number, line in enumerate(lines) if number >= index or line.strip())


def public_forwarded_text(forwarded: str) -> str:
    """The forwarded part as a post may show it: its header lines without addresses."""
    return _public_header_lines(forwarded).strip("\n")


def forwarded_block_text(forwarded: str) -> str:
    """The forwarded part as "> " lines under a "Forwarded message" line."""
    body = public_forwarded_text(forwarded)
    quoted = "\n".join(f"> {line}".rstrip() for line in body.split("\n"))
    return f"{FORWARD_LABEL}\n{quoted}"


def forwarded_block_html(inner_html: str) -> str:
    """A forwarded part's (already sanitised) HTML, collapsed under a "Forwarded message" summary."""
    summary = html_lib.escape(FORWARD_LABEL)
    return f"<details><summary>{summary}</summary><blockquote>{inner_html}</blockquote></details>"


# A forwarded HTML part that starts with its own separator line ("---------- Forwarded message ---------<br>"):
# the summary says it already.
_LEADING_SEPARATOR_HTML_RE = re.compile(r"\A((?:<[a-z]{1,10}>)*)\s*-{2,}[^<\n]{1,80}?-{2,}\s*(?:<br>)?")
_ESCAPED_ADDRESS_IN_BRACKETS_RE = re.compile(r"&lt;\s*(?:<a [^>]{0,300}>)?[^\s<>@&]+@[^\s<>&]+(?:</a>)?\s*&gt;")


def public_html_headers(html_text: str) -> str:
    """Sanitised HTML of a forwarded part without its separator line and without the addresses it shows."""
    html_text = _LEADING_SEPARATOR_HTML_RE.sub(r"\1", html_text, count=1)
    html_text = _ESCAPED_ADDRESS_IN_BRACKETS_RE.sub("", html_text)
    return _BARE_ADDRESS_RE.sub("(address hidden)", html_text)


def _attached_text(attachment: Attachment) -> str | None:
    inner = parse_message(attachment.content)
    body = inner.text if inner.text and inner.text.strip() else None
    if body is None and inner.html:
        body = html_to_text(inner.html)
    headers = [(label, value) for label, value in (
        ("From", inner.from_name or inner.from_address),
        ("Date", inner.date or ""),
        ("Subject", inner.subject),
    ) if value]
    if not headers and not (body or "").strip():
        return None
    head = "\n".join(f"{label}: {value}" for label, value in headers)
    return f"{head}\n\n{(body or '').strip()}".strip()[:_MAX_FORWARDED_CHARS]


def attached_forwards(attachments: Iterable[Attachment]) -> list[str]:
    """The forwarded part of each message/rfc822 attachment (header lines and body), first few only."""
    found: list[str] = []
    for attachment in attachments:
        if attachment.content_type.lower() != "message/rfc822" or not attachment.content:
            continue
        text = _attached_text(attachment)
        if text:
            found.append(text)
        if len(found) == _MAX_ATTACHED_FORWARDS:
            break
    return found
