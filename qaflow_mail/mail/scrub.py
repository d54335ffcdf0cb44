"""Removes our own secrets and footer lines from the text and HTML of an inbound post before it is stored. Pure.

People answer a notification in every style: above the quote, below it, or between its lines. Whatever the
trimmer keeps, a signed token of ours (a reply, unsubscribe, bounce, confirmation or moderation token, in an
address or a link, even inside a rewritten "safe link") and a line of our own footer must never reach a stored
post: the post is shown on the forum and mailed to everyone following it.

Tokens are recognised by their signature, not by where they appear: any run of base32 letters that verifies
with one of our keys is ours. A quoted line that holds one is dropped; in the writer's own lines the address
or link that holds one becomes "[link removed]". Footer lines are recognised by the fixed wording of our
templates (templates/notify, templates/digest, templates/announce).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from qaflow_mail.mail.tokens import MAX_TOKEN_CHARS, signed_by_us

REMOVED = "[link removed]"

_MIN_TOKEN_CHARS = 16
_MAX_RUN_CHARS = 2 * MAX_TOKEN_CHARS
_MAX_PREFIX_CHARS = 4  # "2f" of a percent-encoded "/", "3d" of "=", before a token in a rewritten link
_RUN_RE = re.compile(rf"[a-z2-7]{{{_MIN_TOKEN_CHARS},}}", re.IGNORECASE)
_WORD_EDGES = "<>()[]{}\"'`,;"
_QUOTE_PREFIX_RE = re.compile(r"^(?:[ \t]*>)+[ \t]?")
_SEPARATOR_RE = re.compile(r"^(?:--|__+|-- )\s*$")

# The fixed lines of our footers, as they read in a quote (after the "> ") or in a client's text version of
# our HTML. Kept in step with the templates by a test that scrubs rendered notifications.
FOOTER_LINE_RES = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"^.{1,300} (?:started|replied to) \".*\" in .{1,200} on .{1,200}\.$",
        r"^View the topic: \S+$",
        r"^\[?View the topic on\b",
        r"^Reply to this email to respond\b",
        r"^\(?your reply goes to \S+\)?\.?$",
        r"^To stop getting (?:emails|announcements)\b",
        r"^or send an empty email to \S+",
        r"^You get this (?:email|daily digest|weekly digest|digest)\b",
        r"^Stop .{1,200}: \S+/unsubscribe/\S+$",
        r"^An announcement by .{1,300} to everyone on ",
        r"^Read it on the forum: \S+$",
        r"^To answer a topic, write to its \"Reply by email\" address",
        r"^whole email is not posted: it cannot tell which topic you mean\.?$",
    )
)


@dataclass(frozen=True, slots=True)
class Scrubbed:
    text: str
    html: str | None
    tokens: int  # tokens of ours removed (text and HTML together)
    footer_lines: int  # lines (or HTML blocks) of our footers removed

    @property
    def changed(self) -> bool:
        return bool(self.tokens or self.footer_lines)


def _has_token(run: str, secrets: Sequence[str]) -> bool:
    """Whether a run of base32 letters is, or holds at its edges, a token signed with one of our keys."""
    run = run.lower()
    if len(run) > _MAX_RUN_CHARS:
        return False
    for start in range(min(_MAX_PREFIX_CHARS, len(run) - _MIN_TOKEN_CHARS) + 1):
        for end in range(len(run), max(start + _MIN_TOKEN_CHARS, len(run) - _MAX_PREFIX_CHARS) - 1, -1):
            if signed_by_us(run[start:end], secrets=secrets):
                return True
    return False


def _token_spans(text: str, secrets: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) of every whitespace-delimited word that holds one of our tokens."""
    spans: list[tuple[int, int]] = []
    for match in _RUN_RE.finditer(text):
        if not _has_token(match.group(), secrets):
            continue
        start, end = match.start(), match.end()
        while start > 0 and not text[start - 1].isspace() and text[start - 1] not in _WORD_EDGES:
            start -= 1
        while end < len(text) and not text[end].isspace() and text[end] not in _WORD_EDGES:
            end += 1
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def _replace_tokens(text: str, secrets: Sequence[str]) -> tuple[str, int]:
    spans = _token_spans(text, secrets)
    for start, end in reversed(spans):
        text = text[:start] + REMOVED + text[end:]
    return text, len(spans)


def is_footer_line(line: str) -> bool:
    content = _QUOTE_PREFIX_RE.sub("", line).strip()
    return bool(content) and any(pattern.search(content) for pattern in FOOTER_LINE_RES)


def scrub_text(text: str, *, secrets: Sequence[str]) -> tuple[str, int, int]:
    """(text, tokens removed, footer lines removed)."""
    lines = text.split("\n")
    keep = [True] * len(lines)
    footer = [False] * len(lines)
    tokens = 0
    for index, line in enumerate(lines):
        if is_footer_line(line):
            keep[index] = False
            footer[index] = True
            tokens += len(_token_spans(line, secrets))
            continue
        replaced, found = _replace_tokens(line, secrets)
        if not found:
            continue
        tokens += found
        if _QUOTE_PREFIX_RE.match(line):
            keep[index] = False
            footer[index] = True
        else:
            lines[index] = replaced
    # A signature separator ("-- ") that only introduced our footer goes with it.
    for index, line in enumerate(lines):
        if keep[index] and _SEPARATOR_RE.match(_QUOTE_PREFIX_RE.sub("", line).rstrip() or line.strip()):
            following = next((j for j in range(index + 1, len(lines)) if lines[j].strip(" \t>")), None)
            if following is not None and footer[following]:
                keep[index] = False
                footer[index] = True
    # Blank quote lines (">") that only padded our footer go too.
    has_content = [bool(line.strip(" \t>")) for line in lines]
    for index, line in enumerate(lines):
        if not keep[index] or has_content[index] or not line.strip():
            continue
        after = next((j for j in range(index + 1, len(lines)) if has_content[j]), None)
        before = next((j for j in range(index - 1, -1, -1) if has_content[j]), None)
        if (after is not None and footer[after]) or (after is None and before is not None and footer[before]) or (
                before is not None and footer[before] and after is not None and not keep[after]):
            keep[index] = False
    kept = [line for line, wanted in zip(lines, keep, strict=True) if wanted]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
    return (out if out != text.strip("\n") else text), tokens, sum(footer)


_LINK_RE = re.compile(r"<a\b[^>]*>.*?</a>", re.IGNORECASE | re.DOTALL)
_BLOCK_RE = re.compile(r"<(p|li|div|td)\b[^>]*>((?:(?!<\1\b).){0,4000}?)</\1>", re.IGNORECASE | re.DOTALL)
_TAG_RE = re.compile(r"<[^>]*>")


def _block_is_footer(inner_html: str) -> bool:
    text = " ".join(_TAG_RE.sub(" ", inner_html).split())
    return is_footer_line(text)


def scrub_html(html: str, *, secrets: Sequence[str]) -> tuple[str, int, int]:
    """(html, tokens removed, footer blocks removed) for sanitised HTML."""
    tokens = 0
    footer_blocks = 0

    def drop_block(match: re.Match[str]) -> str:
        nonlocal footer_blocks
        if _block_is_footer(match.group(2)):
            footer_blocks += 1
            return ""
        return match.group()

    def drop_link(match: re.Match[str]) -> str:
        nonlocal tokens
        found = len(_token_spans(match.group(), secrets))
        tokens += found
        return "" if found else match.group()

    out = _BLOCK_RE.sub(drop_block, html)
    out = _LINK_RE.sub(drop_link, out)
    out, found = _replace_tokens(out, secrets)
    tokens += found
    return out, tokens, footer_blocks


def scrub(text: str, html: str | None, *, secrets: Sequence[str]) -> Scrubbed:
    """The post's text and HTML without any token of ours or line of our footers."""
    clean_text, text_tokens, lines = scrub_text(text, secrets=secrets)
    if html is None:
        return Scrubbed(clean_text, None, text_tokens, lines)
    clean_html, html_tokens, blocks = scrub_html(html, secrets=secrets)
    return Scrubbed(clean_text, clean_html, text_tokens + html_tokens, lines + blocks)
