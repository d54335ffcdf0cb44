"""The text a post shows: text/plain preferred, HTML sanitised, quoted history and signatures trimmed."""

from __future__ import annotations

import asyncio
import dataclasses

from qaflow_mail.mail.content import extract_content
from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.replies import EMPTY_REPLY, ONLY_SIGNATURE


async def extract_body(ctx: Context) -> Context | Outcome:
    # Trimming and HTML sanitising are CPU work, up to a few hundred milliseconds on a large body: off the event loop.
    content = await asyncio.to_thread(extract_content, ctx.parsed)
    if content.only_signature:
        return rejected(ONLY_SIGNATURE)
    if content.is_empty:
        return rejected(EMPTY_REPLY)
    return dataclasses.replace(ctx, content=content)
