"""At most [limits] sender_rate_per_hour posts per sender and hour; more gets a temporary 450 4.7.1.

Counted from inbound_messages, so the limit needs no state of its own and holds across restarts and several
workers; the sending MTA retries and the message gets through once the hour has moved on. A limit of 0 or less
switches the check off. The import route has no such step.
"""

from __future__ import annotations

from datetime import timedelta

from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.replies import RATE_LIMITED
from qaflow_mail.services.inbound import accepted_since

WINDOW = timedelta(hours=1)


async def rate_limit(ctx: Context) -> Context | Outcome:
    limit = ctx.deps.settings.limits.sender_rate_per_hour
    address = ctx.parsed.from_address
    if limit <= 0 or not address:
        return ctx
    count = await accepted_since(ctx.session, address, ctx.now - WINDOW)
    if count >= limit:
        return rejected(RATE_LIMITED, f"rate limit: {count} posts from {address} in the last hour (limit {limit})")
    return ctx
