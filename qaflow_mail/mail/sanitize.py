"""HTML from mail made safe to show, HTML turned into readable text, and text turned into HTML. Pure.

The only module that imports bleach. Input is cut at MAX_HTML_CHARS before any parsing, so
the cost of a hostile message stays bounded.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Callable
from html.parser import HTMLParser

import bleach
import html2text
from bleach.linkifier import LinkifyFilter
from bleach.sanitizer import Cleaner

__all__ = [
    "MAX_HTML_CHARS",
    "escape_text_to_html",
    "html_to_text",
    "sanitize_html",
    "split_quoted_html",
    "strip_quoted_html",
]

MAX_HTML_CHARS = 1_000_000

ALLOWED_TAGS = frozenset(
    {
        "p",
        "br",
        "a",
        "b",
        "strong",
        "i",
        "em",
        "u",
        "s",
        "code",
        "pre",
        "blockquote",
        "ul",
        "ol",
        "li",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "th",
        "td",
        "caption",
        "img",
        "details",  # a forwarded message is shown collapsed (mail.forwards)
        "summary",
    }
)
LINK_REL = "nofollow noopener"
_LINK_SCHEMES = ("http://", "https://", "mailto:")

# Dropped with everything inside them, not just the tags.
_DROP_WITH_CONTENT = frozenset(
    {
        "script",
        "style",
        "head",
        "title",
        "template",
        "noscript",
        "iframe",
        "frame",
        "frameset",
        "object",
        "embed",
        "applet",
        "svg",
        "math",
        "textarea",
        "select",
        "xml",
        "canvas",
        "audio",
        "video",
    }
)
_VOID = frozenset(
    {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "param", "source", "track", "wbr"}
)
# Block elements outside the allowlist: their boundaries become line breaks once the tag is gone.
_BLOCKISH = frozenset(
    {
        "div",
        "center",
        "section",
        "article",
        "header",
        "footer",
        "address",
        "figure",
        "dl",
        "dt",
        "dd",
        "main",
        "aside",
        "nav",
        "form",
        "fieldset",
    }
)
_KEPT_BLOCKS = frozenset(
    {
        "p",
        "blockquote",
        "ul",
        "ol",
        "li",
        "pre",
        "table",
        "tr",
        "td",
        "th",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "br",
        "details",
        "summary",
    }
)

# Quoted-history containers written by mail clients: Gmail (gmail_quote, gmail_attr, and gmail_extra of old),
# Yahoo, Thunderbird (moz-cite-prefix, then a blockquote type=cite), ProtonMail, Zoho, Outlook, Front, Spark,
# Zimbra. Set aside with their content when trimming (split_quoted_html).
_QUOTE_CLASSES = frozenset(
    {
        "gmail_quote",
        "gmail_quote_container",
        "gmail_attr",
        "gmail_extra",
        "yahoo_quoted",
        "moz-cite-prefix",
        "moz-forward-container",
        "protonmail_quote",
        "zmail_extra",
        "outlookmessageheader",
        "ms-outlook-mobile-reference-message",
        "x_gmail_quote",
        "front-blockquote",
        "freshdesk_quote",
        "missive_quote",
    }
)
# A sender's own signature: dropped, never part of the quoted history either.
_SIGNATURE_CLASSES = frozenset({"gmail_signature", "moz-signature"})
# Spark's <div name="messageReplySection">; Zimbra's <div data-marker="__HEADERS__"> and "__QUOTED_TEXT__".
_QUOTE_NAMES = frozenset({"messagereplysection"})
_QUOTE_DATA_MARKERS = frozenset({"__headers__", "__quoted_text__"})
# Markers after which the rest of an Outlook / Windows Mail / Zimbra body is the quoted message.
_CUT_IDS = frozenset(
    {
        "divrplyfwdmsg",
        "x_divrplyfwdmsg",
        "olk_src_body_section",
        "appendonsend",
        "stopspelling",
        "mail-editor-reference-message-container",
        "messagereplysection",
        "zwchr",
    }
)
_CUT_DATA_MARKERS = frozenset({"__divider__"})
_OUTLOOK_SEPARATOR_RE = re.compile(r"border-top:\s*solid\s+#(?:b5c4df|e1e1e1)", re.IGNORECASE)


def _bounded(text: str) -> str:
    return text[:MAX_HTML_CHARS] if len(text) > MAX_HTML_CHARS else text


class _Prepass(HTMLParser):
    """Re-emits HTML without dangerous or hidden elements; optionally with quoted history set aside.

    Runs before bleach so that script/style bodies vanish (bleach would keep their text) and
    so that the block structure of divs survives as <br> once bleach strips the div tags.
    With trim_quotes, the content of quote containers, and everything after a cut marker, is
    written to `quoted` instead of `out` (a forward keeps it, a reply drops it).
    """

    def __init__(self, *, trim_quotes: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.trim_quotes = trim_quotes
        self.out: list[str] = []
        self.quoted: list[str] = []
        self.skipping: str | None = None  # an element dropped with its content
        self.skip_depth = 0
        self.quoting: str | None = None  # a quote container whose content goes to `quoted`
        self.quote_depth = 0
        self.stopped = False  # past a cut marker: the rest goes to `quoted`
        self.line_open = False

    @property
    def _target(self) -> list[str]:
        return self.quoted if self.stopped or self.quoting is not None else self.out

    def _skip(self, tag: str) -> None:
        self.skipping, self.skip_depth = tag, 1

    def _is_quote_container(self, tag: str, attrs: dict[str, str]) -> bool:
        if not self.trim_quotes:
            return False
        classes = set(attrs.get("class", "").lower().split())
        if classes & _QUOTE_CLASSES:
            return True
        if attrs.get("name", "").lower() in _QUOTE_NAMES or attrs.get("data-marker", "").lower() in _QUOTE_DATA_MARKERS:
            return True
        return tag == "blockquote" and attrs.get("type", "").lower() == "cite"

    def _is_signature(self, attrs: dict[str, str]) -> bool:
        return self.trim_quotes and bool(set(attrs.get("class", "").lower().split()) & _SIGNATURE_CLASSES)

    def _is_cut_marker(self, tag: str, attrs: dict[str, str]) -> bool:
        if not self.trim_quotes:
            return False
        if attrs.get("id", "").lower() in _CUT_IDS or attrs.get("data-marker", "").lower() in _CUT_DATA_MARKERS:
            return True
        return tag == "div" and bool(_OUTLOOK_SEPARATOR_RE.search(attrs.get("style", "")))

    def _break_line(self) -> None:
        if self.line_open:
            self._target.append("<br>")
            self.line_open = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, closed=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, closed=True)

    def _start(self, tag: str, raw_attrs: list[tuple[str, str | None]], *, closed: bool) -> None:
        opens = not closed and tag not in _VOID
        if self.skipping is not None:
            if tag == self.skipping and opens:
                self.skip_depth += 1
            return
        attrs = {k.lower(): (v or "") for k, v in raw_attrs}
        if tag in _DROP_WITH_CONTENT or self._is_signature(attrs):
            if opens:
                self._skip(tag)
            return
        if self.quoting is not None:
            if tag == self.quoting and opens:
                self.quote_depth += 1
        elif not self.stopped:
            if self._is_cut_marker(tag, attrs):
                self._break_line()
                self.stopped = True
            elif self._is_quote_container(tag, attrs):
                self._break_line()
                if opens:
                    self.quoting, self.quote_depth = tag, 1
                return
        self._emit_start(tag, attrs, raw_attrs)

    def _emit_start(self, tag: str, attrs: dict[str, str], raw_attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            src = attrs.get("src", "").strip()
            if not src.lower().startswith("cid:"):
                return  # remote and data: images are never shown
            raw_attrs = [("src", src), ("alt", attrs.get("alt", ""))]
        elif tag == "a":
            href = attrs.get("href", "").strip()
            safe_href = [("href", href)] if href.lower().startswith(_LINK_SCHEMES) else []
            raw_attrs = [*safe_href, *(("title", v) for k, v in attrs.items() if k == "title")]
        else:
            raw_attrs = [(k, v) for k, v in raw_attrs if not k.lower().startswith("on")]
        if tag in _BLOCKISH:
            self._break_line()
            return
        if tag in _KEPT_BLOCKS:
            self.line_open = False
        rendered = "".join(f' {k}="{html_lib.escape(v or "", quote=True)}"' for k, v in raw_attrs)
        self._target.append(f"<{tag}{rendered}>")

    def handle_endtag(self, tag: str) -> None:
        if self.skipping is not None:
            if tag == self.skipping:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skipping = None
            return
        if self.quoting is not None and tag == self.quoting:
            self.quote_depth -= 1
            if self.quote_depth == 0:
                self._break_line()
                self.quoting = None
                return
        if tag in _BLOCKISH:
            self._break_line()
            return
        if tag in _KEPT_BLOCKS:
            self.line_open = False
        self._target.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self.skipping is not None:
            return
        if data.strip():
            self.line_open = True
        self._target.append(html_lib.escape(data, quote=False))


def _prepass_parts(html: str, *, trim_quotes: bool) -> tuple[str, str]:
    parser = _Prepass(trim_quotes=trim_quotes)
    parser.feed(_bounded(html))
    parser.close()
    return "".join(parser.out), "".join(parser.quoted)


def _prepass(html: str, *, trim_quotes: bool) -> str:
    return _prepass_parts(html, trim_quotes=trim_quotes)[0]


def strip_quoted_html(html: str) -> str:
    """HTML without the quoted history containers of common mail clients (not yet sanitised)."""
    return _prepass(html, trim_quotes=True)


def split_quoted_html(html: str) -> tuple[str, str]:
    """(the writer's own HTML, the quoted or forwarded part): what strip_quoted_html drops is the second (neither
    is sanitised yet)."""
    return _prepass_parts(html, trim_quotes=True)


def _allow_attribute(tag: str, name: str, value: str) -> bool:
    if tag == "a":
        return name == "title" or (name == "href" and value.strip().lower().startswith(_LINK_SCHEMES))
    if tag == "img":
        return (name == "src" and value.strip().lower().startswith("cid:")) or name in {"alt", "title"}
    if tag in {"td", "th"}:
        return name in {"colspan", "rowspan"}
    if tag == "ol":
        return name == "start"
    return False


def _set_rel(attrs: dict[tuple[str | None, str], str], new: bool) -> dict[tuple[str | None, str], str] | None:
    href = attrs.get((None, "href"), "")
    if not href.strip().lower().startswith(_LINK_SCHEMES):
        return None if new else attrs  # bleach already dropped a bad href; keep the text
    attrs[(None, "rel")] = LINK_REL
    return attrs


_Callback = Callable[[dict[tuple[str | None, str], str], bool], dict[tuple[str | None, str], str] | None]
_CALLBACKS: list[_Callback] = [_set_rel]


def _cleaner() -> Cleaner:
    return Cleaner(
        tags=ALLOWED_TAGS,
        attributes=_allow_attribute,
        protocols=frozenset({"http", "https", "mailto", "cid"}),
        strip=True,
        strip_comments=True,
        filters=[lambda source: LinkifyFilter(source, callbacks=_CALLBACKS, skip_tags={"pre", "code"})],
    )


_EMPTY_IMG_RE = re.compile(r"<img(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
_BR_RUN_RE = re.compile(r"(?:<br>\s*){3,}")
_TRAILING_BREAKS = ("<br>", "<hr>")


def _strip_trailing_breaks(html: str) -> str:
    # A loop, not a regex: "(?:\s*<br>)+\s*$" backtracks quadratically over a long run of breaks before text.
    text = html.rstrip()
    while text.endswith(_TRAILING_BREAKS):
        text = text[:-4].rstrip()
    return text


def sanitize_html(html: str) -> str:
    """Strict allowlist cleaning: safe tags only, links with rel="nofollow noopener", inline (cid:) images only."""
    cleaned = str(_cleaner().clean(_prepass(html, trim_quotes=False)))
    cleaned = _EMPTY_IMG_RE.sub("", cleaned)
    cleaned = _BR_RUN_RE.sub("<br><br>", cleaned)
    return _strip_trailing_breaks(cleaned).strip()


def _converter() -> html2text.HTML2Text:
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.unicode_snob = True
    converter.ignore_images = True
    converter.ignore_emphasis = True
    converter.skip_internal_links = True
    converter.ignore_mailto_links = True  # "<a href=mailto:x>x</a>" reads as x, as quote headers expect
    converter.single_line_break = False
    return converter


_HR_RE = re.compile(r"^\* \* \*$", re.MULTILINE)  # html2text's rendering of <hr>
_BLANK_RUN_RE = re.compile(r"\n{3,}")


def html_to_text(html: str) -> str:
    """Readable plain text; blockquotes become "> " lines so quote trimming works on the result."""
    text = _converter().handle(_prepass(html, trim_quotes=False))
    text = text.replace("\u00a0", " ")
    # rstrip per line, not "[ \t]+$": that regex is quadratic over a long run of spaces inside a line.
    text = _HR_RE.sub("---", "\n".join(line.rstrip(" \t") for line in text.split("\n")))
    return _BLANK_RUN_RE.sub("\n\n", text).strip()


def escape_text_to_html(text: str) -> str:
    """Plain text as safe HTML paragraphs (line breaks kept), URLs linkified with rel="nofollow noopener"."""
    paragraphs = re.split(r"\n[ \t]*\n+", _bounded(text).replace("\r\n", "\n").strip())
    body = "".join(
        "<p>" + "<br>\n".join(html_lib.escape(line, quote=False) for line in para.split("\n")) + "</p>\n"
        for para in paragraphs
        if para.strip()
    )
    return str(bleach.linkify(body, callbacks=_CALLBACKS, skip_tags={"pre", "code"})).strip()
