"""Retention: what the gateway forgets after [retention] days, so the database stops growing with old traffic.

- Outbox rows sent or failed more than ``sent_outbox_days`` ago are deleted (their dedupe keys have done their job:
  nothing queues the same digest, notification or notice again that late), and then the shared bodies (a digest's)
  no row names any more.
- The raw copy of an inbound message is cut to its header block and the first ``KEPT_BODY_BYTES`` of its body:
  after ``accepted_inbound_days`` for accepted and held mail, after ``refused_inbound_days`` for rejected,
  discarded and retried mail. Shunted mail is never cut: ``shunt retry`` sends the whole message through again.
- Pending references (ids an orphan post named before the mail they name arrived) are deleted
  ``pending_reference_days`` after their post; once the mail they name has arrived ("resolved") they are deleted
  after ``RESOLVED_REFERENCE_GRACE``, when the re-attach sweep has had many chances to use them.
- Failure counts of inbound messages that never came back are deleted after ``refused_inbound_days``.

Every pass is idempotent and safe to run on several nodes at once; ``dry_run`` counts without changing anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import RetentionSettings
from qaflow_mail.db.models import (
    Disposition,
    InboundFailure,
    InboundMessage,
    Outbox,
    OutboxBody,
    OutboxStatus,
    PendingReference,
    Post,
)

KEPT_BODY_BYTES = 64 * 1024
# A header block longer than this was refused at the door (limits.max_header_size is 256 KB by default); the
# prefix read of each raw message is bounded by it, so a pass never loads a 25 MB message whole.
MAX_HEADER_READ = 1024 * 1024
RESOLVED_REFERENCE_GRACE = timedelta(hours=1)
TRIM_BATCH = 50

ACCEPTED_DISPOSITIONS = (Disposition.ACCEPTED.value, Disposition.HELD.value)
REFUSED_DISPOSITIONS = (Disposition.REJECTED.value, Disposition.DISCARDED.value, Disposition.RETRIED.value)
FINISHED_OUTBOX = (OutboxStatus.SENT.value, OutboxStatus.FAILED.value)


@dataclass(frozen=True, slots=True)
class RetentionReport:
    outbox_deleted: int = 0
    outbox_bodies_deleted: int = 0
    accepted_inbound_trimmed: int = 0
    refused_inbound_trimmed: int = 0
    bytes_freed: int = 0
    pending_references_deleted: int = 0
    inbound_failures_deleted: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def trimmed(raw: bytes) -> bytes:
    """``raw`` cut to its header block and the first KEPT_BODY_BYTES of the body (unchanged when shorter)."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := raw.find(sep, 0, MAX_HEADER_READ)) >= 0]
    body_start = min(ends) if ends else 0
    return raw[: body_start + KEPT_BODY_BYTES]


def _days(days: int) -> timedelta | None:
    """None for 0 or less: that kind of data is kept for ever."""
    return timedelta(days=days) if days > 0 else None


async def prune(session: AsyncSession, retention: RetentionSettings, *, now: datetime,
                dry_run: bool = False) -> RetentionReport:
    """One retention pass in the caller's transaction; what it deleted or cut (or, dry, would)."""
    outbox = await _prune_outbox(session, _days(retention.sent_outbox_days), now, dry_run)
    bodies = await _prune_outbox_bodies(session, _days(retention.sent_outbox_days), now, dry_run)
    accepted, freed_accepted = await _trim_inbound(session, ACCEPTED_DISPOSITIONS,
                                                   _days(retention.accepted_inbound_days), now, dry_run)
    refused, freed_refused = await _trim_inbound(session, REFUSED_DISPOSITIONS,
                                                 _days(retention.refused_inbound_days), now, dry_run)
    references = await _prune_references(session, _days(retention.pending_reference_days), now, dry_run)
    failures = await _prune_failures(session, _days(retention.refused_inbound_days), now, dry_run)
    return RetentionReport(outbox_deleted=outbox, outbox_bodies_deleted=bodies, accepted_inbound_trimmed=accepted,
                           refused_inbound_trimmed=refused,
                           bytes_freed=freed_accepted + freed_refused, pending_references_deleted=references,
                           inbound_failures_deleted=failures, dry_run=dry_run)


async def _count(session: AsyncSession, model: type, *conditions: object) -> int:
    return int(await session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)  # type: ignore[arg-type]


async def _delete_or_count(session: AsyncSession, model: type, *conditions: ColumnElement[bool], dry_run: bool) -> int:
    """Delete the rows of `model` that meet `conditions`, and say how many (dry: only count them)."""
    if dry_run:
        return await _count(session, model, *conditions)
    result = await session.execute(delete(model).where(*conditions).execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _prunable_outbox(keep: timedelta, now: datetime) -> tuple[ColumnElement[bool], ...]:
    # A failed row was never sent: its last attempt (next_attempt_at is not moved after the final one) dates it.
    finished_at = func.coalesce(Outbox.sent_at, Outbox.next_attempt_at)
    return Outbox.status.in_(FINISHED_OUTBOX), finished_at < now - keep


async def _prune_outbox(session: AsyncSession, keep: timedelta | None, now: datetime, dry_run: bool) -> int:
    if keep is None:
        return 0
    return await _delete_or_count(session, Outbox, *_prunable_outbox(keep, now), dry_run=dry_run)


async def _prune_outbox_bodies(session: AsyncSession, keep: timedelta | None, now: datetime, dry_run: bool) -> int:
    """Bodies as old as the rows pruned with them that no row kept names (a dry run: that no row it would keep)."""
    if keep is None:
        return 0
    unused = ~exists().where(Outbox.body_id == OutboxBody.id, ~and_(*_prunable_outbox(keep, now)))
    return await _delete_or_count(session, OutboxBody, OutboxBody.created_at < now - keep, unused, dry_run=dry_run)


async def _trim_inbound(session: AsyncSession, dispositions: tuple[str, ...], keep: timedelta | None, now: datetime,
                        dry_run: bool) -> tuple[int, int]:
    """(messages cut, bytes freed). Only a bounded prefix of each raw copy is read."""
    if keep is None:
        return 0, 0
    cut = freed = 0
    after_id = 0
    prefix = func.substr(InboundMessage.raw, 1, MAX_HEADER_READ + KEPT_BODY_BYTES)
    while True:
        rows = (await session.execute(
            select(InboundMessage.id, func.length(InboundMessage.raw), prefix)
            .where(InboundMessage.id > after_id, InboundMessage.disposition.in_(dispositions),
                   InboundMessage.received_at < now - keep, func.length(InboundMessage.raw) > KEPT_BODY_BYTES)
            .order_by(InboundMessage.id).limit(TRIM_BATCH)
        )).all()
        if not rows:
            return cut, freed
        for message_id, length, head in rows:
            after_id = message_id
            kept = trimmed(bytes(head))
            if len(kept) >= int(length):
                continue  # already cut (or a long header block and a short body)
            cut += 1
            freed += int(length) - len(kept)
            if not dry_run:
                await session.execute(update(InboundMessage).where(InboundMessage.id == message_id).values(raw=kept))


async def _prune_references(session: AsyncSession, keep: timedelta | None, now: datetime, dry_run: bool) -> int:
    resolved = exists().where(Post.message_id == PendingReference.message_id)
    posted_before = select(Post.id).where(Post.created_at < now - RESOLVED_REFERENCE_GRACE)
    where: ColumnElement[bool] = resolved & PendingReference.post_id.in_(posted_before)
    if keep is not None:
        where = where | PendingReference.post_id.in_(select(Post.id).where(Post.created_at < now - keep))
    return await _delete_or_count(session, PendingReference, where, dry_run=dry_run)


async def _prune_failures(session: AsyncSession, keep: timedelta | None, now: datetime, dry_run: bool) -> int:
    if keep is None:
        return 0
    return await _delete_or_count(session, InboundFailure, InboundFailure.last_failed_at < now - keep, dry_run=dry_run)
