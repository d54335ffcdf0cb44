"""Reading a message's body for a post: trimmed and sanitised (in a worker process for a large one, with a
deadline), then every token and footer line of ours removed (mail.scrub)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from qaflow_mail.deps import Deps
from qaflow_mail.mail.content import Content, extract_content
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.scrub import scrub
from qaflow_mail.pipeline.cpu import extract_untrusted

log = logging.getLogger(__name__)


async def read_body(deps: Deps, parsed: ParsedMail) -> Content:
    """The body as a post shows it: trimmed and sanitised, without our tokens and footer lines. ingest reads it
    before its transaction, so none of this runs while the write lock is held."""
    extracted = await extract_untrusted(parsed, deps.settings.limits, extract_content)
    return await _scrubbed(deps, parsed.message_id, extracted)


async def _scrubbed(deps: Deps, message_id: str, content: Content) -> Content:
    """The content without our tokens and footer lines; the removal is logged (counts only, never a token)."""
    clean = await asyncio.to_thread(scrub, content.text, content.html, secrets=deps.settings.tokens.secrets)
    if not clean.changed:
        return content
    log.info("scrub.removed message_id=%s tokens=%d footer_lines=%d", message_id, clean.tokens,
             clean.footer_lines)
    return dataclasses.replace(content, text=clean.text, html=clean.html,
                               is_empty=content.is_empty or not clean.text.strip(" \t\n>"))
