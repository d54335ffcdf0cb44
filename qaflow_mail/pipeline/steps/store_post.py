"""Store the topic (for a new thread) and the post."""

from __future__ import annotations

import dataclasses

from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.services.posts import dated
from qaflow_mail.services.posts import store_post as store


async def _store(ctx: Context, *, imported: bool) -> Context:
    assert ctx.author is not None and ctx.category is not None and ctx.content is not None
    post = await store(
        ctx.session, author=ctx.author, category=ctx.category, parent=ctx.parent, parsed=ctx.parsed,
        content=ctx.content, source=ctx.source, waiting_for=ctx.candidates, known_ancestors=ctx.known_ancestors,
        written_at=dated(ctx.parsed.date, now=ctx.now) if imported else ctx.now,
    )
    return dataclasses.replace(ctx, post=post)


async def store_post(ctx: Context) -> Context | Outcome:
    return await _store(ctx, imported=False)


async def store_imported_post(ctx: Context) -> Context | Outcome:
    """An archived message keeps the date it was written (when sane)."""
    return await _store(ctx, imported=True)
