"""What we already hold of inbound mail: messages taken before, and how much a sender sent lately."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Disposition, InboundMessage, Post

TAKEN = (Disposition.ACCEPTED, Disposition.DISCARDED, Disposition.HELD, Disposition.SHUNTED)


async def duplicate_reason(session: AsyncSession, message_id: str) -> str | None:
    """Why a message with this Message-ID was handled already (posted, or taken), or None when it is new."""
    posted = select(Post.id).where(Post.message_id == message_id).exists()
    taken = select(InboundMessage.id).where(
        InboundMessage.message_id == message_id, InboundMessage.disposition.in_(TAKEN)).exists()
    was_posted, was_taken = (await session.execute(select(posted, taken))).one()
    if was_posted:
        return "duplicate: already posted"
    return "duplicate: already received" if was_taken else None


async def accepted_since(session: AsyncSession, address: str, since: datetime) -> int:
    """Messages from this From address taken since `since` (the per-sender rate limit counts them)."""
    count = await session.scalar(
        select(func.count(InboundMessage.id)).where(
            InboundMessage.from_address == address,
            InboundMessage.received_at > since,
            InboundMessage.disposition == Disposition.ACCEPTED.value,
        )
    )
    return int(count or 0)
