"""The text a post shows: text/plain preferred, HTML sanitised, quoted history and signatures trimmed. A post
needs text or an attachment: a screenshot or a PDF sent without words is a post too. Every token and footer
line of ours is removed (mail.scrub) before anything is stored."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from qaflow_mail.mail.content import Content, extract_content
from qaflow_mail.mail.scrub import scrub
from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.pipeline.cpu import extract_untrusted
from qaflow_mail.replies import EMPTY_REPLY, NO_TEXT, ONLY_SIGNATURE

log = logging.getLogger(__name__)



async def _scrubbed(ctx: Context, content: Content) -> Content:
    """The content without our tokens and footer lines; the removal is logged (counts only, never a token)."""
    clean = await asyncio.to_thread(scrub, content.text, content.html, secrets=ctx.deps.settings.tokens.secrets)
    if not clean.changed:
        return content
    log.info("scrub.removed message_id=%s tokens=%d footer_lines=%d", ctx.parsed.message_id, clean.tokens,
             clean.footer_lines)
    return dataclasses.replace(content, text=clean.text, html=clean.html,
                               is_empty=content.is_empty or not clean.text.strip(" \t\n>"))


async def extract_body(ctx: Context) -> Context | Outcome:
    # Trimming and HTML sanitising are CPU work on untrusted input: in a worker process, with a deadline.
    # ingest reads the body before the transaction; a caller that did not is served here.
    extracted = ctx.content or await extract_untrusted(ctx.parsed, ctx.deps.settings.limits, extract_content)
    content = await _scrubbed(ctx, extracted)
    if content.is_empty and not ctx.parsed.attachments:
        if content.only_signature:
            return rejected(ONLY_SIGNATURE)
        if not content.full_text.strip():
            return rejected(NO_TEXT)
        return rejected(EMPTY_REPLY)
    return dataclasses.replace(ctx, content=content)
