"""The text a post shows: text/plain preferred, HTML sanitised, quoted history and signatures trimmed. A post
needs text or an attachment: a screenshot or a PDF sent without words is a post too. Every token and footer
line of ours is removed (mail.scrub) before anything is stored."""

from __future__ import annotations

import dataclasses

from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.pipeline.body import read_body
from qaflow_mail.replies import EMPTY_REPLY, NO_TEXT, ONLY_SIGNATURE


async def extract_body(ctx: Context) -> Context | Outcome:
    # Trimming and HTML sanitising are CPU work on untrusted input: in a worker process, with a deadline.
    # ingest reads the body (read_body) before the transaction; a caller that did not is served here.
    content = ctx.content if ctx.content is not None else await read_body(ctx.deps, ctx.parsed)
    if content.is_empty and not ctx.parsed.attachments:
        if content.only_signature:
            return rejected(ONLY_SIGNATURE)
        if not content.full_text.strip():
            return rejected(NO_TEXT)
        return rejected(EMPTY_REPLY)
    return dataclasses.replace(ctx, content=content)
