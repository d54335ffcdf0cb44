"""The last step of a successful post: the message is taken."""

from __future__ import annotations

from qaflow_mail.pipeline import Context, Outcome, accepted


async def accept(ctx: Context) -> Context | Outcome:
    return accepted(None if ctx.post is None else ctx.post.id)
