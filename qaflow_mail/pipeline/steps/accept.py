"""The last step of a successful post: the message is taken."""

from __future__ import annotations

from qaflow_mail.db.models import Post
from qaflow_mail.pipeline import Context, Outcome, accepted


async def accept(ctx: Context) -> Context | Outcome:
    post = ctx.extra.get("post")
    return accepted(post.id if isinstance(post, Post) else None)
