"""Who is writing, and may they post here? Unknown senders become staged users only where strangers are welcome."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import User, UserStatus
from qaflow_mail.replies import NO_FROM, NOT_TOKEN_OWNER, SENDER_NOT_ALLOWED, Refusal


async def admit_sender(
    session: AsyncSession, *, address: str, display_name: str, strangers_welcome: bool,
    token_user_id: int | None, now: datetime,
) -> User | Refusal:
    """The user a post is stored under, or why they may not post.

    `strangers_welcome`: the category takes posts from unknown senders (or an archive is imported);
    `token_user_id`: the user a verified reply token was sent to, who alone may use it.
    """
    if not address:
        return Refusal(NO_FROM, NO_FROM.text)
    user = await queries.user_by_email(session, address)
    if token_user_id is not None and (user is None or user.id != token_user_id):
        return Refusal(NOT_TOKEN_OWNER, f"reply token of user {token_user_id} used by {address}")
    if user is None:
        if not strangers_welcome:
            return Refusal(SENDER_NOT_ALLOWED, f"unknown sender {address}")
        user = await queries.add_user(session, email=address, display_name=display_name, status=UserStatus.STAGED,
                                      now=now)
    if user.status == UserStatus.DISABLED:
        return Refusal(SENDER_NOT_ALLOWED, f"disabled sender {address}")
    if user.status == UserStatus.STAGED and not (strangers_welcome or token_user_id is not None):
        return Refusal(SENDER_NOT_ALLOWED, f"staged sender {address} outside an open category")
    return user
