"""Who is writing, and may they post here? Unknown senders become staged users only where strangers may post,
or when an archive is imported."""

from __future__ import annotations

import dataclasses

from qaflow_mail.db import queries
from qaflow_mail.db.models import IMPORT_SOURCE, UserStatus
from qaflow_mail.errors import SENDER_NOT_ALLOWED, SmtpReply
from qaflow_mail.pipeline import Context, Outcome, rejected

NO_FROM = SmtpReply(550, "5.7.1", "The message has no usable From address")
NOT_TOKEN_OWNER = SmtpReply(
    550, "5.7.1", "This reply address was sent to another subscriber; reply from the address that received it"
)


async def authorize_sender(ctx: Context) -> Context | Outcome:
    address = ctx.parsed.from_address
    if not address:
        return rejected(NO_FROM, notify_sender=False)
    user = await queries.user_by_email(ctx.session, address)
    # An archive import keeps every author's posts: unknown authors become staged users in any category.
    strangers_welcome = (ctx.category is not None and ctx.category.allow_strangers) or ctx.source == IMPORT_SOURCE
    if ctx.token_ids:
        _post_id, token_user_id = ctx.token_ids[:2]
        if user is None or user.id != token_user_id:
            return rejected(NOT_TOKEN_OWNER, f"reply token of user {token_user_id} used by {address}")
    if user is None:
        if not strangers_welcome:
            return rejected(SENDER_NOT_ALLOWED, f"unknown sender {address}")
        user = await queries.add_user(
            ctx.session, email=address, display_name=ctx.parsed.from_name, status=UserStatus.STAGED, now=ctx.now
        )
    if user.status == UserStatus.DISABLED:
        return rejected(SENDER_NOT_ALLOWED, f"disabled sender {address}")
    if user.status == UserStatus.STAGED and not (strangers_welcome or ctx.token_ids):
        return rejected(SENDER_NOT_ALLOWED, f"staged sender {address} outside an open category")
    return dataclasses.replace(ctx, author=user)
