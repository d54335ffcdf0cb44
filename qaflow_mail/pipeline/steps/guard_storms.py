"""A stored reply that looks like part of a reply storm or a loop (services.storm_guard) is held, not mailed."""

from __future__ import annotations

from qaflow_mail.db.models import Disposition
from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.replies import OK
from qaflow_mail.services.storm_guard import hold_storm, storm_reason


async def guard_storms(ctx: Context) -> Context | Outcome:
    assert ctx.post is not None, "guard_storms runs after store_post"
    reason = await storm_reason(ctx.session, ctx.deps.settings.limits, post=ctx.post, now=ctx.now)
    if reason is None:
        return ctx
    await hold_storm(ctx.session, ctx.deps, post=ctx.post, reason=reason, now=ctx.now)
    return Outcome(Disposition.HELD, OK, f"post {ctx.post.id} held: {reason}", ctx.post.id)
