"""The shunt (as in GNU Mailman): a message the pipeline fails on every time is set aside, not retried forever.

A failure that may pass on retry (the database unreachable or locked, a network error) is not counted: the
sender gets a 4xx and tries again. Any other failure is counted against the message's bytes in its own
transaction; after [limits] shunt_after_failures of them the message is stored with disposition `shunted` and
its last error, the sender gets a 250 (it is on disk), the admins are mailed once, and `qaflow-mail shunt retry`
sends it through again once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import Disposition, InboundFailure, InboundMessage, OutboxKind, Source, User, UserStatus
from qaflow_mail.deps import Deps
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import MailTemplate
from qaflow_mail.outbound.site_notice import site_notice, user_bounce_address

log = logging.getLogger(__name__)

ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class FailedMessage:
    """What is known of a message the pipeline failed on (parsing itself may have failed)."""

    raw: bytes
    message_id: str
    from_address: str
    subject: str
    envelope_from: str
    recipients: Sequence[str]
    source: Source

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


@dataclass(frozen=True, slots=True)
class Shunted:
    id: int
    message_id: str
    from_address: str
    envelope_from: str
    recipients: list[str]
    source: Source
    received_at: datetime
    reason: str


# PostgreSQL errors that pass on retry: statement or lock timeout, server shutting down or starting, too many
# connections, disk full, out of memory.
_TEMPORARY_SQLSTATES = frozenset({"57014", "55P03", "57P01", "57P02", "57P03", "53000", "53100", "53200", "53300"})


def is_temporary(error: BaseException) -> bool:
    """Whether a failure may pass on retry (→ 451): the database or the network, including a statement that ran
    past [database] statement_timeout; never the message itself."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeout | OSError | asyncio.TimeoutError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    return error.connection_invalidated or getattr(error.orig, "sqlstate", None) in _TEMPORARY_SQLSTATES


def describe(error: BaseException) -> str:
    """One line naming the error, without the statement parameters a database error would quote."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}"[:ERROR_CHARS]


async def count_failure(deps: Deps, message: FailedMessage, error: BaseException, *, now: datetime) -> int:
    """Record one failed attempt (its own transaction); the attempts so far, this one included."""
    values = {"sha256": message.sha256, "message_id": message.message_id[:255], "attempts": 1,
              "last_error": describe(error), "first_failed_at": now, "last_failed_at": now}
    async with deps.sessions() as session, session.begin():
        stmt = dialect_insert(session, InboundFailure).values(**values)
        await session.execute(stmt.on_conflict_do_update(
            index_elements=["sha256"],
            set_={"attempts": InboundFailure.attempts + 1, "last_error": values["last_error"], "last_failed_at": now},
        ))
        attempts = await session.scalar(select(InboundFailure.attempts).where(InboundFailure.sha256 == message.sha256))
    return int(attempts or 1)


async def forget_failures(session: AsyncSession, sha256: str) -> None:
    """The message went through: its failed attempts no longer count."""
    await session.execute(delete(InboundFailure).where(InboundFailure.sha256 == sha256))


async def shunt(deps: Deps, message: FailedMessage, error: BaseException, *, attempts: int, now: datetime) -> int:
    """Store the message as shunted with its error and mail each admin once; the inbound record's id."""
    reason = f"shunted after {attempts} failed attempts: {describe(error)}"
    async with deps.sessions() as session, session.begin():
        record = InboundMessage(
            message_id=message.message_id[:255], sha256=message.sha256, envelope_from=message.envelope_from[:320],
            recipients=json.dumps(list(message.recipients)), from_address=message.from_address[:320],
            source=message.source.value, received_at=now, disposition=Disposition.SHUNTED.value, reason=reason,
            post_id=None, raw=message.raw,
        )
        session.add(record)
        await session.flush()
        await forget_failures(session, message.sha256)
        await _mail_admins(session, deps, message, record.id, attempts=attempts, error=error, now=now)
    deps.outbox_wakeup()
    log.error("inbound.shunted id=%s message_id=%s attempts=%d error=%s", record.id, message.message_id, attempts,
              describe(error))
    return record.id


async def _mail_admins(
    session: AsyncSession, deps: Deps, message: FailedMessage, shunt_id: int, *, attempts: int,
    error: BaseException, now: datetime,
) -> None:
    settings = deps.settings
    admins = (await session.scalars(
        select(User).where(User.is_admin.is_(True), User.status == UserStatus.ACTIVE.value).order_by(User.id)
    )).all()
    rendered = deps.renderer.render(MailTemplate.NOTICE_SHUNTED, {
        "site": {"name": settings.site.name, "base_url": settings.site.base_url},
        "shunt_id": shunt_id,
        "attempts": attempts,
        "sender": message.from_address,
        "original_subject": " ".join(message.subject.split())[:200],
        "message_id": message.message_id,
        "error": describe(error),
    })
    mails = []
    for admin in admins:
        message_id = make_message_id("shunt", f"{shunt_id}.{admin.id}", domain=settings.site.domain,
                                     salt=settings.site.message_id_salt)
        raw = site_notice(settings, to=admin.email, rendered=rendered, message_id=message_id, in_reply_to=None,
                          now=now)
        mails.append(OutgoingMessage(
            kind=OutboxKind.NOTICE, dedupe_key=f"shunt:{message.sha256}:{admin.id}", message_id=message_id,
            envelope_from=user_bounce_address(settings, admin.id, now=now), recipient=admin.email, raw=raw,
            user_id=admin.id,
        ))
    await enqueue(session, mails, now=now)


def _shunted(record: InboundMessage) -> Shunted:
    return Shunted(id=record.id, message_id=record.message_id, from_address=record.from_address,
                   envelope_from=record.envelope_from, recipients=list(json.loads(record.recipients or "[]")),
                   source=Source(record.source), received_at=record.received_at, reason=record.reason)


async def list_shunted(session: AsyncSession) -> list[Shunted]:
    rows = await session.scalars(
        select(InboundMessage).where(InboundMessage.disposition == Disposition.SHUNTED.value)
        .order_by(InboundMessage.id)
    )
    return [_shunted(row) for row in rows]


async def take_for_retry(session: AsyncSession, shunt_id: int) -> tuple[Shunted, bytes] | None:
    """Mark a shunted message as retried (so it is no longer a duplicate of itself) and hand back its bytes."""
    record = await session.scalar(
        select(InboundMessage).where(InboundMessage.id == shunt_id,
                                     InboundMessage.disposition == Disposition.SHUNTED.value).with_for_update()
    )
    if record is None:
        return None
    record.disposition = Disposition.RETRIED.value
    return _shunted(record), record.raw


async def put_back(session: AsyncSession, shunt_id: int, error: str) -> None:
    """A retry failed again: the message stays shunted, with the new error."""
    record = await session.get(InboundMessage, shunt_id)
    if record is not None:
        record.disposition = Disposition.SHUNTED.value
        record.reason = f"retry failed: {error}"[:4000]
