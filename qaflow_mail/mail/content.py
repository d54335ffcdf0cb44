"""What a post shows from a parsed mail: the body chosen, quoted history and signatures trimmed. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from qaflow_mail.mail.forwards import (
    attached_forwards,
    forwarded_block_html,
    forwarded_block_text,
    public_forwarded_text,
    public_html_headers,
    split_forward,
)
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.quotes import is_signature_only, split_reply
from qaflow_mail.mail.sanitize import (
    escape_text_to_html,
    html_to_text,
    sanitize_html,
    split_quoted_html,
    strip_quoted_html,
)

__all__ = ["BodySource", "Content", "enriched_to_text", "extract_content", "html_reply_text"]


class BodySource(StrEnum):
    PLAIN = "plain"
    HTML = "html"
    ENRICHED = "enriched"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Content:
    text: str  # the trimmed visible reply a post shows
    full_text: str  # the chosen body as text, untrimmed
    html: str | None  # sanitised HTML of the visible reply when the mail had HTML, else None
    elided: str  # what trimming removed (quoted history, signatures)
    is_empty: bool  # nothing left once trimmed
    only_signature: bool  # the writer's own lines were only a signature
    source: BodySource = BodySource.NONE
    forwarded: bool = False  # a forward: text and html end with the forwarded part as a collapsed quote


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_WORD_RE = re.compile(r"\w+")


def _normalize(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_RE.sub("", text).replace("\u00a0", " ")


# Trimming reads a body's first 100 KB only, cut at a line break; the rest is elided (and
# kept in full_text). A reply's own words come first, and 100 KB is three times what a
# forum post holds (Discourse's default limit is 32,000 characters), so a post loses
# nothing it would show. The cap also bounds the trimmer's input, so no per-line rule,
# however costly, can make a hostile body slow.
_MAX_TRIMMED_CHARS = 100 * 1024


def _split_at_cap(text: str) -> tuple[str, str]:
    """(the part to trim, the rest): cut at the last line break within the cap, inside the line if there is none."""
    if len(text) <= _MAX_TRIMMED_CHARS:
        return text, ""
    cut = text.rfind("\n", 0, _MAX_TRIMMED_CHARS + 1)
    if cut <= 0:
        return text[:_MAX_TRIMMED_CHARS], text[_MAX_TRIMMED_CHARS:]
    return text[:cut], text[cut + 1 :]


def _split_capped(text: str) -> tuple[str, str]:
    """split_reply on the first 100 KB; what lies beyond the cap is added to the elided part."""
    head, rest = _split_at_cap(text)
    visible, elided = split_reply(head)
    rest = rest.strip()
    return visible, f"{elided}\n{rest}".strip() if rest else elided


_ENRICHED_TOKEN_RE = re.compile(r"(<<|<[^<>]{1,60}>)")
_NEWLINES_RE = re.compile(r"\n+")


def _fill_newlines(match: re.Match[str]) -> str:
    """In text/enriched one newline is a space and n newlines are n - 1 line breaks."""
    count = len(match.group())
    return " " if count == 1 else "\n" * (count - 1)


def enriched_to_text(enriched: str) -> str:
    """text/enriched (RFC 1896) or text/richtext as plain text: commands dropped, line filling applied."""
    out: list[str] = []
    param = nofill = 0
    for token in _ENRICHED_TOKEN_RE.split(enriched.replace("\r\n", "\n")):
        if token == "<<":
            if not param:
                out.append("<")
        elif token.startswith("<") and token.endswith(">"):
            name = token[1:-1].strip().lower()
            param += {"param": 1, "/param": -1}.get(name, 0)
            nofill += {"nofill": 1, "/nofill": -1}.get(name, 0)
            param, nofill = max(param, 0), max(nofill, 0)
            if name in {"nl", "lt"}:  # text/richtext spells these as commands
                out.append("\n" if name == "nl" else "<")
        elif not param:
            if nofill:
                out.append(token)
            else:
                out.append(_NEWLINES_RE.sub(_fill_newlines, token))
    return "".join(out)


def _choose_body(parsed: ParsedMail) -> tuple[BodySource, str]:
    if parsed.text is not None and parsed.text.strip():
        return BodySource.PLAIN, parsed.text
    if parsed.html is not None and parsed.html.strip():
        return BodySource.HTML, html_to_text(parsed.html)
    if parsed.enriched is not None and parsed.enriched.strip():
        return BodySource.ENRICHED, enriched_to_text(parsed.enriched)
    return BodySource.NONE, parsed.text or ""


def html_reply_text(html: str) -> str:
    """The visible reply of an HTML body as text: quote containers dropped, then the text trimmed."""
    return _split_capped(_normalize(html_to_text(strip_quoted_html(html))))[0]


def _visible_html(raw_html: str, visible: str) -> str:
    """The mail's HTML without its quoted history, sanitised; the escaped visible text if that fails.

    Trimming the HTML works on the containers mail clients put quotes in. When what is left
    still says clearly more than the trimmed text (an unknown client's quoting), the HTML
    is rebuilt from the trimmed text instead, so a post never shows the quoted history.
    """
    trimmed = sanitize_html(strip_quoted_html(raw_html))
    html_words = len(_WORD_RE.findall(html_to_text(trimmed))) if trimmed else 0
    text_words = len(_WORD_RE.findall(visible))
    if html_words == 0 or html_words > text_words * 1.3 + 20:
        return escape_text_to_html(visible)
    return trimmed


def _only_quotes(text: str) -> bool:
    """True when nothing the writer typed is left: blank, or every remaining line is a "> " quote."""
    return all(not line.strip() or line.lstrip().startswith(">") for line in text.splitlines())


def _joined(*parts: str) -> str:
    return "\n\n".join(part for part in parts if part.strip())


def _forward_html(raw_html: str | None, own_visible: str, forwarded_texts: list[str], *, inline: bool) -> str:
    """The post's HTML for a forward: the forwarder's words, then each forwarded part collapsed.

    An inline forward's part is taken from the mail's own HTML when a client put it in a quote container (so
    its formatting survives); otherwise, and for attached messages, it is built from the text.
    """
    own_html = escape_text_to_html(own_visible) if own_visible.strip() else ""
    blocks: list[str] = []
    if inline and raw_html is not None and raw_html.strip():
        mine, quoted = split_quoted_html(raw_html)
        quoted_html = sanitize_html(quoted) if quoted.strip() else ""
        if quoted_html and _WORD_RE.search(html_to_text(quoted_html)):
            mine_html = sanitize_html(mine)
            if _WORD_RE.search(html_to_text(mine_html)) and own_visible.strip():
                own_html = _visible_html(raw_html, own_visible)
            blocks.append(forwarded_block_html(public_html_headers(quoted_html)))
            forwarded_texts = forwarded_texts[1:]
    blocks += [forwarded_block_html(escape_text_to_html(public_forwarded_text(text))) for text in forwarded_texts]
    return "".join((own_html, *blocks))


def _forward_content(parsed: ParsedMail, source: BodySource, full_text: str) -> Content | None:
    """The content of a forward (inline, or message/rfc822 attachments), or None when the mail is no forward."""
    head, _rest = _split_at_cap(full_text)
    inline = split_forward(head, parsed.subject)
    attached = attached_forwards(parsed.attachments)
    if inline is None and not attached:
        return None
    own = inline.own if inline is not None else head
    own_visible, elided = _split_capped(own)
    if source is BodySource.HTML and parsed.html is not None and inline is None:
        own_visible = html_reply_text(parsed.html)
    forwarded_texts = ([inline.forwarded] if inline is not None else []) + attached
    text = _joined(own_visible, *(forwarded_block_text(f) for f in forwarded_texts))
    html = None
    if parsed.html is not None and parsed.html.strip():
        html = _forward_html(parsed.html, own_visible, forwarded_texts, inline=inline is not None)
    return Content(
        text=text,
        full_text=full_text,
        html=html,
        elided=elided,
        is_empty=False,
        only_signature=False,
        source=source,
        forwarded=True,
    )


def extract_content(parsed: ParsedMail) -> Content:
    source, body = _choose_body(parsed)
    full_text = _normalize(body).strip()
    forward = _forward_content(parsed, source, full_text)
    if forward is not None:
        return forward
    visible, elided = _split_capped(full_text)
    if source is BodySource.HTML and parsed.html is not None:
        visible = html_reply_text(parsed.html)
    is_empty = _only_quotes(visible)
    html = None
    if parsed.html is not None and parsed.html.strip() and not is_empty:
        html = _visible_html(parsed.html, visible)
    return Content(
        text=visible,
        full_text=full_text,
        html=html,
        elided=elided,
        is_empty=is_empty,
        only_signature=is_empty and is_signature_only(_split_at_cap(full_text)[0]),
        source=source,
    )
