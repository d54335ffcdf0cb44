"""Outbox rows for the category's "each post" subscribers, never the author; written with the post."""

from __future__ import annotations

from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.services.notifications import notify_followers as notify


async def notify_followers(ctx: Context) -> Context | Outcome:
    assert ctx.post is not None, "notify_followers runs after store_post"
    await notify(ctx.session, ctx.deps, ctx.post, now=ctx.now)
    return ctx
