"""A moderator's reply to moderate+<token>@: APPROVE publishes the held post (and mails it), REJECT refuses it."""

from __future__ import annotations

from qaflow_mail.mail.addresses import Moderate
from qaflow_mail.pipeline import Context, Outcome, accepted, rejected
from qaflow_mail.replies import Refusal
from qaflow_mail.services.moderation import decide_by_mail


async def apply_moderation(ctx: Context) -> Context | Outcome:
    assert isinstance(ctx.destination, Moderate)
    decided = await decide_by_mail(ctx.session, ctx.deps, token=ctx.destination.token, reply=ctx.parsed, now=ctx.now)
    if isinstance(decided, Refusal):
        return rejected(decided)
    return accepted(reason=f"post {decided.post.id} {decided.decision.value}")
