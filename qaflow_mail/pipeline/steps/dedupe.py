"""A message we already took (SMTP retry, IMAP re-poll, a second delivery) is accepted again but stored once."""

from __future__ import annotations

from sqlalchemy import select

from qaflow_mail.db.models import Disposition, InboundMessage, Post
from qaflow_mail.pipeline import Context, Outcome, discarded


async def dedupe(ctx: Context) -> Context | Outcome:
    mid = ctx.parsed.message_id
    if await ctx.session.scalar(select(Post.id).where(Post.message_id == mid)) is not None:
        return discarded("duplicate: already posted")
    seen = await ctx.session.scalar(
        select(InboundMessage.id)
        .where(
            InboundMessage.message_id == mid,
            InboundMessage.disposition.in_([Disposition.ACCEPTED, Disposition.DISCARDED, Disposition.HELD]),
        )
        .limit(1)
    )
    if seen is not None:
        return discarded("duplicate: already received")
    return ctx
