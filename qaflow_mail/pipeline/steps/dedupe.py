"""A message we already took (SMTP retry, IMAP re-poll, a second delivery) is accepted again but stored once."""

from __future__ import annotations

from qaflow_mail.pipeline import Context, Outcome, discarded
from qaflow_mail.services.inbound import duplicate_reason


async def dedupe(ctx: Context) -> Context | Outcome:
    reason = await duplicate_reason(ctx.session, ctx.parsed.message_id)
    return ctx if reason is None else discarded(reason)
