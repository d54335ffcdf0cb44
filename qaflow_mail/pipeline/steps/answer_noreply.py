"""Mail to our From address is not posted: a reply to a digest is told how to reply to one topic; anything else
is told which addresses do take mail."""

from __future__ import annotations

from qaflow_mail.db.queries import find_digest_reference
from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.replies import DIGEST_REPLY, NOT_A_MAILBOX


async def answer_noreply(ctx: Context) -> Context | Outcome:
    referenced = (*ctx.parsed.in_reply_to, *ctx.parsed.references)
    if await find_digest_reference(ctx.session, referenced) is not None:
        return rejected(DIGEST_REPLY, "reply to a whole digest")
    return rejected(NOT_A_MAILBOX, "mail to the notifications address")
