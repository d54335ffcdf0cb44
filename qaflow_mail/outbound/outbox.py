"""The outbox, the one durable queue every outgoing message goes through: writing rows, and draining them
(claim due rows, hand them to a `Mailer`, record what the relay said).

Rows are written in the caller's transaction (with the post, the digest mark or the announcement), so a crash
never loses or duplicates a message: the unique dedupe key makes a re-run insert nothing new.

Row life cycle: pending → sending (claimed by one worker until `claimed_until`) → sent | pending again (a
temporary failure, with backoff) | failed (a permanent refusal, or out of attempts).

Delivery guarantees, stated honestly:
- Two workers never send the same row at once: a row moves to "sending" in one conditional UPDATE, and only the
  worker whose name is in `claimed_by` may record its result. On PostgreSQL the candidate rows are also locked
  with FOR UPDATE SKIP LOCKED, so concurrent workers take disjoint batches instead of waiting for each other.
- A row is marked sent only after the relay answered 250 to its DATA (or the Maildir file was written), and as
  soon as it did: each 250 is committed as it comes back (those that arrive during one commit share the next).
  With a `SentJournal` (the serve process's sender has one) the row's id is first appended to it and the slot is
  freed at once; the marks are then committed every `JOURNALED_MARK_INTERVAL` rather than back to back (one
  fsync for a hundred rows, not for three or four), and a drain, and a restarted sender, marks what the journal
  holds sent before it claims anything. Without one the slot is freed only once the mark is committed.
- At least once, not exactly once, over SMTP: if the process dies while a message is on the wire (or the relay
  accepted it but its 250 never reached us, or came after the batch deadline) the row stays "sending"; once its
  claim expires (`lease_seconds`) another drain sends it again. That is at most [outbound] concurrency messages.
  Without a journal, those between the relay's 250 and the commit of its mark count too (a slot carries a message
  from MAIL FROM to that commit); with one, they are lost only with the machine (a power cut: the journal is not
  fsynced). Recipients see a duplicate at worst, never a loss.
- Exactly once to a Maildir: the row id names the file (see `DELIVERY_KEY`), so sending a row again finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import ColumnElement, and_, bindparam, case, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.group_commit import writing
from qaflow_mail.db.models import Outbox, OutboxKind, OutboxStatus, UTCDateTime
from qaflow_mail.outbound.bounce_score import DeliveryFailure, record_delivery_failures
from qaflow_mail.outbound.mailer import DELIVERY_KEY, DeliveryError, Mailer
from qaflow_mail.outbound.sent_journal import SentJournal
from qaflow_mail.outbound.stored_bodies import PrototypeCache, StoredBody, store

if TYPE_CHECKING:
    from qaflow_mail.deps import Deps

log = logging.getLogger(__name__)

# How long a claim lasts. A batch gets 80% of it to finish its sends, so its results are recorded before any
# other worker may take its rows back.
DEFAULT_LEASE_SECONDS = 300.0
_SEND_SHARE_OF_LEASE = 0.8

PENDING = OutboxStatus.PENDING.value
SENDING = OutboxStatus.SENDING.value
SENT = OutboxStatus.SENT.value
FAILED = OutboxStatus.FAILED.value


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    kind: OutboxKind
    dedupe_key: str
    message_id: str
    envelope_from: str
    recipient: str
    raw: bytes  # with `body`: the recipient's values for it (stored_bodies.values_json)
    user_id: int | None = None
    post_id: int | None = None
    announcement_id: int | None = None
    body: StoredBody | None = None  # the shared body this message fills in

    def whole(self) -> bytes:
        """The message as it will be sent."""
        return self.raw if self.body is None else self.body.fill(self.raw)


def _row(message: OutgoingMessage, now: datetime) -> dict[str, Any]:
    return {
        "kind": message.kind.value,
        "dedupe_key": message.dedupe_key,
        "message_id": message.message_id,
        "envelope_from": message.envelope_from,
        "recipient": message.recipient,
        "raw": message.raw,
        "body_id": message.body.id if message.body is not None else None,
        "user_id": message.user_id,
        "post_id": message.post_id,
        "announcement_id": message.announcement_id,
        "status": PENDING,
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
    await store(session, {m.body for m in messages if m.body is not None and m.body.id is None}, now=now)
    stmt = dialect_insert(session, Outbox).on_conflict_do_nothing(index_elements=["dedupe_key"])
    for start in range(0, len(messages), chunk):
        await session.execute(stmt, [_row(m, now) for m in messages[start : start + chunk]])


class RequeueError(Exception):
    """The row cannot be requeued; the message says why."""


@dataclass(frozen=True, slots=True)
class DrainStats:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0


def retry_delay(attempts: int, *, base_seconds: float, max_seconds: float) -> timedelta:
    """Wait before the next try after `attempts` failed ones: base, 2×base, 4×base, … capped at max."""
    if attempts < 1:
        return timedelta(0)
    exponent = min(attempts - 1, 62)  # 2**62 × any sane base is far past any cap; avoids float overflow
    return timedelta(seconds=min(base_seconds * 2.0**exponent, max_seconds))


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(Outbox.status == PENDING, Outbox.next_attempt_at <= now),
        # A claim that ran out: the worker crashed, or never recorded its results.
        and_(Outbox.status == SENDING, Outbox.claimed_until < now),
    )


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """What sending one claimed outbox row needs (a plain row: building ORM objects took most of a claim)."""

    id: int
    envelope_from: str
    recipient: str
    raw: bytes  # with body_id: the values to fill into that body (made whole as it is sent)
    attempts: int
    user_id: int | None
    next_attempt_at: datetime
    body_id: int | None = None


_CLAIMED_COLUMNS = (Outbox.id, Outbox.envelope_from, Outbox.recipient, Outbox.raw, Outbox.attempts, Outbox.user_id,
                    Outbox.next_attempt_at, Outbox.body_id)
# The shared bodies that claimed rows name, read back once per database a process sends from (ids are never reused).
_PROTOTYPES: weakref.WeakKeyDictionary[object, PrototypeCache] = weakref.WeakKeyDictionary()


def _prototypes(deps: Deps) -> PrototypeCache:
    cache = _PROTOTYPES.get(deps.sessions)
    if cache is None:
        cache = _PROTOTYPES[deps.sessions] = PrototypeCache()
    return cache


async def claim(
    session: AsyncSession, *, worker: str, now: datetime, limit: int, lease_seconds: float
) -> list[ClaimedRow]:
    """Mark up to `limit` due rows as being sent by `worker` until now + lease, and return them, oldest first.

    One statement: WITH claimable AS (SELECT … LIMIT n [FOR UPDATE SKIP LOCKED]) UPDATE … WHERE id IN claimable
    AND <still due> RETURNING.
    On SQLite the UPDATE takes the single write lock before reading, so a row claimed by a concurrent worker is
    no longer due when this statement sees it.
    """
    if limit <= 0:
        return []
    due = _due(now)
    # MATERIALIZED: PostgreSQL must run the locking, limited SELECT once. Inlined as a plain IN (subquery), the
    # planner may rescan it inside a semi-join, and every rescan brings in more rows than the LIMIT.
    candidates = (
        select(Outbox.id)
        .where(due)
        .order_by(Outbox.next_attempt_at, Outbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("claimable")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    stmt = (
        update(Outbox)
        .where(Outbox.id.in_(select(candidates.c.id)), due)
        .values(status=SENDING, claimed_by=worker, claimed_until=now + timedelta(seconds=lease_seconds))
        .returning(*_CLAIMED_COLUMNS)
        .execution_options(synchronize_session=False)
    )
    rows = [ClaimedRow(*cast("tuple[Any, ...]", row)) for row in (await session.execute(stmt)).all()]
    rows.sort(key=lambda row: (row.next_attempt_at, row.id))
    return rows


def _per_row(values: Mapping[int, Any], type_: Any, fallback: Any) -> Any:
    """A CASE on the row id: one UPDATE sets a different value on each row of a batch."""
    return case({row_id: literal(value, type_) for row_id, value in values.items()}, value=Outbox.id,
                else_=fallback)


async def _finish(session: AsyncSession, ids: Collection[int], *, worker: str, values: dict[str, Any]) -> set[int]:
    """Apply `values` to the rows still claimed by `worker`; return the ids that were."""
    if not ids:
        return set()
    stmt = (
        update(Outbox)
        .where(Outbox.id.in_(list(ids)), Outbox.status == SENDING, Outbox.claimed_by == worker)
        .values(attempts=Outbox.attempts + 1, claimed_until=None, **values)
        .returning(Outbox.id)
        .execution_options(synchronize_session=False)
    )
    return set((await session.scalars(stmt)).all())


# Built once: they run for every few messages sent, and building one took longer than executing it.
# Rows a sent journal names are marked whoever holds them now (the relay accepted them); a sender's own 250s only
# on the rows it still holds.
_MARK_JOURNALED = (
    update(Outbox)
    .where(Outbox.id.in_(bindparam("ids", expanding=True)), Outbox.status == SENDING)
    .values(attempts=Outbox.attempts + 1, claimed_until=None, status=SENT,
            sent_at=bindparam("sent_at", type_=Outbox.sent_at.type), last_error="")
    .execution_options(synchronize_session=False)
)
_MARK_SENT = (
    _MARK_JOURNALED.where(Outbox.claimed_by == bindparam("worker", type_=Outbox.claimed_by.type))
    .returning(Outbox.id)
)


async def mark_sent(session: AsyncSession, ids: Collection[int], *, now: datetime, worker: str) -> set[int]:
    """Record these rows as sent, if `worker` still holds them; returns the ids that it did."""
    if not ids:
        return set()
    return set((await session.scalars(_MARK_SENT, {"ids": list(ids), "worker": worker, "sent_at": now})).all())


async def mark_retry(
    session: AsyncSession,
    failures: Sequence[tuple[ClaimedRow, str]],
    *,
    now: datetime,
    settings: Settings,
    worker: str,
) -> tuple[set[int], set[int]]:
    """Temporary failures: back to pending after a backoff, or failed once out of attempts.

    Returns (retried ids, given-up ids). Giving up records no bounce: a relay that stayed unreachable says
    nothing about the recipient's address.
    """
    outbound = settings.outbound
    retry: dict[int, tuple[datetime, str]] = {}
    give_up: dict[int, str] = {}
    for row, error in failures:
        attempts = row.attempts + 1
        if attempts >= outbound.max_attempts:
            give_up[row.id] = f"gave up after {attempts} attempts: {error}"
        else:
            delay = retry_delay(attempts, base_seconds=outbound.retry_base_seconds,
                                max_seconds=outbound.retry_max_seconds)
            retry[row.id] = (now + delay, error)
    retried = await _finish(session, retry.keys(), worker=worker, values={
        "status": PENDING,
        "next_attempt_at": _per_row({k: v[0] for k, v in retry.items()}, UTCDateTime(), Outbox.next_attempt_at),
        "last_error": _per_row({k: v[1] for k, v in retry.items()}, Outbox.last_error.type, Outbox.last_error),
    })
    given_up = await _finish(session, give_up.keys(), worker=worker, values={
        "status": FAILED,
        "last_error": _per_row(give_up, Outbox.last_error.type, Outbox.last_error),
    })
    return retried, given_up


async def mark_failed(
    session: AsyncSession,
    failures: Sequence[tuple[ClaimedRow, str]],
    *,
    now: datetime,
    settings: Settings,
    worker: str,
    bounce: bool = True,
) -> set[int]:
    """Permanent refusals: the row is failed, and each recipient gets a hard bounce (see bounce_score); without
    `bounce` (the row itself was at fault, not the address), no bounce."""
    errors = {row.id: error for row, error in failures}
    failed = await _finish(session, errors.keys(), worker=worker, values={
        "status": FAILED,
        "last_error": _per_row(errors, Outbox.last_error.type, Outbox.last_error),
    })
    bounces = [
        DeliveryFailure(address=row.recipient, user_id=row.user_id, outbox_id=row.id, diagnostic=error, hard=True)
        for row, error in failures
        if row.id in failed and bounce
    ]
    await record_delivery_failures(session, bounces, settings=settings, now=now)
    return failed


async def requeue(session: AsyncSession, outbox_id: int, now: datetime) -> None:
    """Send a failed (or waiting) row again as soon as a drain runs, with a fresh count of attempts."""
    stmt = (
        update(Outbox)
        .where(Outbox.id == outbox_id, Outbox.status.in_([FAILED, PENDING]))
        .values(status=PENDING, next_attempt_at=now, attempts=0, claimed_by=None, claimed_until=None)
        .returning(Outbox.id)
        .execution_options(synchronize_session=False)
    )
    if (await session.scalars(stmt)).first() is not None:
        return
    status = await session.scalar(select(Outbox.status).where(Outbox.id == outbox_id))
    if status is None:
        raise RequeueError(f"no outbox row {outbox_id}")
    if status == SENT:
        raise RequeueError(f"outbox row {outbox_id} was sent already; requeueing it would send it twice")
    raise RequeueError(f"outbox row {outbox_id} is being sent right now")


JOURNALED_MARK_INTERVAL = 0.1  # seconds between two commits of marks when the journal holds them meanwhile


class _SentRecorder:
    """Commits each row as sent as soon as its 250 is back; the ids that arrive during one commit share the next
    (with a journal, those of the next `JOURNALED_MARK_INTERVAL` too). ``add`` gives a future that is done once
    the row's commit is (whether it succeeded: ``close`` says), or at once when the id is in the journal."""

    def __init__(self, deps: Deps, worker: str, journal: SentJournal | None = None) -> None:
        self.deps = deps
        self.worker = worker
        self.journal = journal
        self.recorded: set[int] = set()
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, row_id: int) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.journal is not None:
            self.journal.append(row_id)  # safe from here on: the slot need not wait for the commit
            done.set_result(None)
        if self._task.done():  # a commit failed: nothing more is recorded in this batch
            if not done.done():
                done.set_result(None)
            return done
        self._waiting.append((row_id, done))
        self._wake.set()
        return done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    async with writing(self.deps.sessions), self.deps.sessions() as session, session.begin():
                        self.recorded |= await mark_sent(session, [row_id for row_id, _ in batch],
                                                         now=self.deps.clock(), worker=self.worker)
                    if self.journal is not None and not self._waiting:
                        self.journal.clear()  # every id in it is committed now (a long drain keeps it short)
                finally:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
                if self.journal is not None and not self._closing.is_set():
                    # The journal keeps each 250 through a crash already: gather marks for a moment rather than
                    # commit (an fsync each) a handful at a time.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), JOURNALED_MARK_INTERVAL)
            if self._closing.is_set():
                return

    async def close(self) -> set[int]:
        """Wait for the last commit; raises when one failed (those rows stay claimed; they are sent again, or,
        with a journal, marked sent by the next drain). The journal was emptied by the last commit."""
        self._closing.set()
        self._wake.set()
        await self._task
        return self.recorded


_JOURNAL_CHUNK = 500


async def settle_journal(deps: Deps, journal: SentJournal) -> int:
    """Mark the rows the journal names sent (those still "sending"), then empty it; how many ids it held."""
    ids = journal.pending
    if not ids:
        return 0
    async with writing(deps.sessions), deps.sessions() as session, session.begin():
        connection = await session.connection()
        for start in range(0, len(ids), _JOURNAL_CHUNK):
            await connection.execute(_MARK_JOURNALED, {"ids": ids[start : start + _JOURNAL_CHUNK],
                                                       "sent_at": deps.clock()})
    journal.clear()
    log.info("outbox.journal_settled ids=%d", len(ids))
    return len(ids)


# The next batch is claimed when this many rounds of [outbound] concurrency messages of the current one are left
# to start: a claim of 500 rows takes 30-60 ms on SQLite, a round of 8 messages to a local relay about 10.
_CLAIM_AHEAD_ROUNDS = 8


class _Tail:
    """Set once all but `left` rows of a batch have taken a send slot: time to claim the next batch, so that it is
    there when the slots come free."""

    def __init__(self, rows: int, left: int) -> None:
        self.waiting = rows
        self.left = left
        self.reached = asyncio.Event()
        if rows <= left:
            self.reached.set()

    def took_slot(self) -> None:
        self.waiting -= 1
        if self.waiting <= self.left:
            self.reached.set()


class Unsendable(DeliveryError):
    """A row no message can be made of: failed for good, and no bounce counted against its recipient."""


async def _attempt(
    mailer: Mailer, row: ClaimedRow, slots: asyncio.Semaphore, deadline: float, recorder: _SentRecorder,
    tail: _Tail, prototypes: PrototypeCache,
) -> DeliveryError | None:
    DELIVERY_KEY.set(f"outbox-{row.id}")  # this task's own context: the Maildir names the file after the row
    sent = False
    try:
        raw = row.raw if row.body_id is None else prototypes.message(row.body_id, row.raw)
    except ValueError as exc:  # the same every time: a permanent failure, not a retry
        return Unsendable(True, None, f"the stored message cannot be made whole: {exc}")
    try:
        async with asyncio.timeout_at(deadline), slots:
            tail.took_slot()
            await mailer.send(row.envelope_from, row.recipient, raw)
            sent = True
            # The slot is held until the 250 is committed, or written to the journal: at most [outbound]
            # concurrency messages are ever accepted by the relay yet nowhere recorded, all a crash can send twice.
            await recorder.add(row.id)
    except DeliveryError as exc:
        return exc
    except TimeoutError:
        if sent:
            return None  # delivered; its mark is on its way
        return DeliveryError(False, None, "no answer before the batch deadline")
    except Exception as exc:  # a bug in a mailer must not stall the queue: retry later, keep the trace
        log.exception("outbox.send_crashed id=%s", row.id)
        return DeliveryError(False, None, f"{type(exc).__name__}: {exc}")
    return None


async def _claim_batch(
    deps: Deps, *, worker: str, lease_seconds: float, prototypes: PrototypeCache
) -> list[ClaimedRow]:
    """Claim a batch, and read the shared bodies its rows name that `prototypes` does not hold yet."""
    async with writing(deps.sessions), deps.sessions() as session, session.begin():
        rows = await claim(session, worker=worker, now=deps.clock(), limit=deps.settings.outbound.batch_size,
                           lease_seconds=lease_seconds)
        bodies = {row.body_id for row in rows if row.body_id is not None}
        if bodies:
            await prototypes.load(session, bodies)
        return rows


async def _tail_or_end(tail: _Tail, sends: asyncio.Future[list[DeliveryError | None]]) -> bool:
    """Wait until the batch's last rows are on their way (True) or it ended without (its rows ran out of time)."""
    reached: asyncio.Future[object] = asyncio.ensure_future(tail.reached.wait())
    try:
        await asyncio.wait({reached, cast("asyncio.Future[object]", sends)}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reached.cancel()
    return tail.reached.is_set()


async def drain_once(
    deps: Deps, mailer: Mailer, *, worker: str, lease_seconds: float = DEFAULT_LEASE_SECONDS,
    journal: SentJournal | None = None, keep_going: Callable[[], bool] | None = None,
) -> DrainStats:
    """Claim one batch (one short transaction), send it concurrently, record every result (one transaction).
    With a journal, what it holds from before (a crash, a failed commit) is marked sent first.

    With `keep_going`, a full batch is followed by the next without a pause while it says so: the next is
    claimed as soon as the last rows of the one before have a send slot, and fills the slots they free (else the
    relay would wait for that batch's slowest message and a claim, tens of milliseconds, every batch)."""
    settings = deps.settings
    outbound = settings.outbound
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    if journal is not None:
        await settle_journal(deps, journal)
    claimed_at = loop.time()
    prototypes = _prototypes(deps)
    rows = await _claim_batch(deps, worker=worker, lease_seconds=lease_seconds, prototypes=prototypes)
    if not rows:
        return DrainStats()

    slots = asyncio.Semaphore(max(1, outbound.concurrency))
    recorder = _SentRecorder(deps, worker, journal)
    on_the_wire: list[tuple[list[ClaimedRow], asyncio.Future[list[DeliveryError | None]]]] = []
    temporary: list[tuple[ClaimedRow, str]] = []
    permanent: list[tuple[ClaimedRow, str]] = []
    unsendable: list[tuple[ClaimedRow, str]] = []
    claimed = 0

    async def collect(batch: list[ClaimedRow], sends: asyncio.Future[list[DeliveryError | None]]) -> None:
        for row, error in zip(batch, await sends, strict=True):
            if error is None:
                continue  # recorded as its 250 came back
            if isinstance(error, Unsendable):
                unsendable.append((row, str(error)))
                log.error("outbox.unsendable id=%s error=%s", row.id, error)
            elif error.permanent:
                permanent.append((row, str(error)))
                log.warning("outbox.refused id=%s recipient=%s error=%s", row.id, row.recipient, error)
            else:
                temporary.append((row, str(error)))
                log.info("outbox.deferred id=%s recipient=%s error=%s", row.id, row.recipient, error)

    try:
        while rows:
            deadline = claimed_at + lease_seconds * _SEND_SHARE_OF_LEASE
            tail = _Tail(len(rows), left=outbound.concurrency * _CLAIM_AHEAD_ROUNDS)
            sends = asyncio.gather(*(_attempt(mailer, row, slots, deadline, recorder, tail, prototypes)
                                     for row in rows))
            on_the_wire.append((rows, sends))
            claimed += len(rows)
            if len(on_the_wire) > 1:  # the batch before is down to its last few messages: wait for them
                await collect(*on_the_wire.pop(0))
            if keep_going is None or len(rows) < outbound.batch_size:
                break
            if not await _tail_or_end(tail, sends) or not keep_going():
                break
            claimed_at = loop.time()
            rows = await _claim_batch(deps, worker=worker, lease_seconds=lease_seconds, prototypes=prototypes)
    finally:
        try:
            while on_the_wire:
                await collect(*on_the_wire.pop(0))
        finally:
            sent = await recorder.close()

    retried: set[int] = set()
    given_up: set[int] = set()
    failed: set[int] = set()
    if temporary or permanent or unsendable:
        now = deps.clock()
        async with writing(deps.sessions), deps.sessions() as session, session.begin():
            retried, given_up = await mark_retry(session, temporary, now=now, settings=settings, worker=worker)
            failed = await mark_failed(session, permanent, now=now, settings=settings, worker=worker)
            failed |= await mark_failed(session, unsendable, now=now, settings=settings, worker=worker, bounce=False)

    stats = DrainStats(claimed=claimed, sent=len(sent), retried=len(retried), failed=len(failed) + len(given_up))
    log.info("outbox.drained worker=%s claimed=%d sent=%d retried=%d failed=%d ms=%d", worker, stats.claimed,
             stats.sent, stats.retried, stats.failed, (time.monotonic() - started) * 1000)
    return stats
