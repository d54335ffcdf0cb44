"""At most [limits] sender_rate_per_hour posts per sender and hour; more gets a temporary 450 4.7.1.

Counted from inbound_messages (accepted messages from the same From address in the last hour), so the limit
needs no state of its own and holds across restarts and several workers. A refusal is temporary: the sending
MTA retries later and the message gets through once the hour has moved on. Archive imports are not limited.
A limit of 0 or less switches the check off.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from qaflow_mail.db.models import IMPORT_SOURCE, Disposition, InboundMessage
from qaflow_mail.errors import RATE_LIMITED
from qaflow_mail.pipeline import Context, Outcome, rejected

WINDOW = timedelta(hours=1)
UNLIMITED_SOURCES = frozenset({IMPORT_SOURCE})


async def posts_in_window(ctx: Context, address: str) -> int:
    count = await ctx.session.scalar(
        select(func.count(InboundMessage.id)).where(
            InboundMessage.from_address == address,
            InboundMessage.received_at > ctx.now - WINDOW,
            InboundMessage.disposition == Disposition.ACCEPTED.value,
        )
    )
    return int(count or 0)


async def rate_limit(ctx: Context) -> Context | Outcome:
    limit = ctx.deps.settings.limits.sender_rate_per_hour
    address = ctx.parsed.from_address
    if limit <= 0 or not address or ctx.source in UNLIMITED_SOURCES:
        return ctx
    count = await posts_in_window(ctx, address)
    if count >= limit:
        return rejected(RATE_LIMITED, f"rate limit: {count} posts from {address} in the last hour (limit {limit})",
                        notify_sender=False)
    return ctx
