"""Writing to the outbox: the one durable queue every outgoing message goes through.

Rows are written in the caller's transaction (with the post, the digest mark or the announcement), so a crash
never loses or duplicates a message: the unique dedupe key makes a re-run insert nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import Outbox, OutboxKind, OutboxStatus


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    kind: OutboxKind
    dedupe_key: str
    message_id: str
    envelope_from: str
    recipient: str
    raw: bytes
    user_id: int | None = None
    post_id: int | None = None
    announcement_id: int | None = None


def _row(message: OutgoingMessage, now: datetime) -> dict[str, Any]:
    return {
        "kind": message.kind.value,
        "dedupe_key": message.dedupe_key,
        "message_id": message.message_id,
        "envelope_from": message.envelope_from,
        "recipient": message.recipient,
        "raw": message.raw,
        "user_id": message.user_id,
        "post_id": message.post_id,
        "announcement_id": message.announcement_id,
        "status": OutboxStatus.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": "",
        "created_at": now,
    }


async def enqueue(
    session: AsyncSession, messages: Sequence[OutgoingMessage], *, now: datetime, chunk: int = 2000
) -> None:
    """Insert outbox rows as batched statements (`chunk` rows each); rows whose dedupe key exists are skipped."""
    if not messages:
        return
    stmt = dialect_insert(session, Outbox).on_conflict_do_nothing(index_elements=["dedupe_key"])
    for start in range(0, len(messages), chunk):
        await session.execute(stmt, [_row(m, now) for m in messages[start : start + chunk]])
