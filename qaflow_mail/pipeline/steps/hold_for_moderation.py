"""A stored post that must wait for a moderator (services.moderation) is held: not mailed, not shown."""

from __future__ import annotations

from qaflow_mail.db.models import Disposition
from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.replies import OK
from qaflow_mail.services.moderation import hold, hold_reason


async def hold_for_moderation(ctx: Context) -> Context | Outcome:
    assert ctx.post is not None and ctx.author is not None and ctx.category is not None and ctx.content is not None
    reason = await hold_reason(ctx.session, ctx.deps.settings, author=ctx.author, category=ctx.category, raw=ctx.raw,
                               content=ctx.content, exclude_post_id=ctx.post.id)
    if reason is None:
        return ctx
    await hold(ctx.session, ctx.deps, post=ctx.post, reason=reason, parsed=ctx.parsed, now=ctx.now)
    return Outcome(Disposition.HELD, OK, f"post {ctx.post.id} held: {reason}", ctx.post.id)
