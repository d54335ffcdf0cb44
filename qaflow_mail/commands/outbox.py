"""`qaflow-mail outbox [--status S] [--limit N] [--json]` lists the queue; `qaflow-mail outbox retry ID` requeues."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.db.models import Outbox, OutboxStatus
from qaflow_mail.outbound.outbox import RequeueError, requeue

STATUSES = [status.value for status in OutboxStatus]


async def list_outbox(session: AsyncSession, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The queue, newest first, without the message bodies."""
    stmt = select(
        Outbox.id, Outbox.kind, Outbox.recipient, Outbox.status, Outbox.attempts, Outbox.next_attempt_at,
        Outbox.last_error, Outbox.created_at, Outbox.sent_at,
    ).order_by(Outbox.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Outbox.status == status)
    return [
        {"id": row.id, "kind": row.kind, "recipient": row.recipient, "status": row.status,
         "attempts": row.attempts, "next_attempt_at": iso(row.next_attempt_at), "last_error": row.last_error,
         "created_at": iso(row.created_at), "sent_at": iso(row.sent_at)}
        for row in await session.execute(stmt)
    ]


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return await list_outbox(session, status=args.status, limit=args.limit)

    rows = run_in_session(settings, work)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("outbox empty" if args.status is None else f"no {args.status} rows in the outbox")
        return 0
    for row in rows:
        when = row["sent_at"] if row["status"] == OutboxStatus.SENT else f"next {row['next_attempt_at']}"
        error = f"  last error: {row['last_error']}" if row["last_error"] else ""
        print(f"#{row['id']:<6} {row['status']:<8} {row['kind']:<13} {row['recipient']:<40} "
              f"attempts {row['attempts']}  {when}{error}")
    return 0


def cmd_outbox_retry(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> None:
        try:
            await requeue(session, args.id, datetime.now(UTC))
        except RequeueError as exc:
            raise CommandError(str(exc)) from None

    run_in_session(settings, work)
    print(f"outbox row {args.id} requeued: the sender tries it on its next pass")
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def register(subparsers: Subparsers) -> None:
    """`outbox` lists by itself, and has one optional sub-command, `retry ID`."""
    outbox = subparsers.add_parser("outbox", help="the outgoing mail queue (list; `outbox retry ID` requeues)")
    outbox.add_argument("--status", choices=STATUSES, help="only rows with this status")
    outbox.add_argument("--limit", type=_positive, default=100, help="at most this many rows (default 100)")
    outbox.add_argument("--json", action="store_true")
    outbox.set_defaults(func=cmd_outbox)
    actions = outbox.add_subparsers(dest="outbox_command", metavar="ACTION")
    retry = actions.add_parser("retry", help="requeue a failed row: pending again, next attempt now")
    retry.add_argument("id", type=int)
    retry.set_defaults(func=cmd_outbox_retry)
