"""A post's body as a page shows it. Pure.

The stored HTML was sanitised when the mail arrived (images there may only point at ``cid:`` parts); here its
``cid:`` images are pointed at the attachment they name, or replaced by their alt text when there is none, and
addresses are masked. A post without HTML is its text as escaped paragraphs.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from qaflow_mail.outbound.render import paragraphs
from qaflow_mail.services.topics import AttachmentInfo, redact_addresses

RASTER_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

_IMG_RE = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_SRC_RE = re.compile(r'\bsrc="cid:([^"]*)"', re.IGNORECASE)
_ALT_RE = re.compile(r'\balt="([^"]*)"', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Body:
    html: Markup
    cited: frozenset[int]  # attachments shown in place


def _content_id(value: str) -> str:
    return html.unescape(value).strip().strip("<>").strip().lower()


def render_body(body_html: str | None, body_text: str, attachments: Sequence[AttachmentInfo],
                url_of: Callable[[AttachmentInfo], str]) -> Body:
    if not body_html:
        return Body(html=paragraphs(redact_addresses(body_text)), cited=frozenset())
    by_cid = {_content_id(att.content_id): att for att in attachments
              if att.content_id and att.content_type in RASTER_TYPES}
    cited: set[int] = set()

    def image(match: re.Match[str]) -> str:
        tag = match.group(0)
        src = _SRC_RE.search(tag)
        attachment = by_cid.get(_content_id(src.group(1))) if src else None
        alt_match = _ALT_RE.search(tag)
        alt = alt_match.group(1) if alt_match else ""  # already escaped by the sanitiser
        if attachment is None:
            return f"<span class=\"missing-image\">[{alt or 'image'}]</span>"
        cited.add(attachment.id)
        return f'<img src="{escape(url_of(attachment))}" alt="{alt or escape(attachment.filename)}" loading="lazy">'

    rewritten = _IMG_RE.sub(image, body_html)
    return Body(html=Markup(redact_addresses(rewritten)), cited=frozenset(cited))
