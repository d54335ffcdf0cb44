"""A published post's fan-out job, written with the post: a worker tells its followers after the 250."""

from __future__ import annotations

from qaflow_mail.db.models import FanoutKind
from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.services.fanout_jobs import enqueue


async def notify_followers(ctx: Context) -> Context | Outcome:
    assert ctx.post is not None, "notify_followers runs after store_post"
    await enqueue(ctx.session, kind=FanoutKind.POST, target_id=ctx.post.id, now=ctx.now)
    return ctx
