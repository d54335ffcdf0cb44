"""`qaflow-mail retention run [--dry-run] [--json]`: one retention pass now (what the scheduled job does hourly)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import Subparsers, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.services.retention import RetentionReport, prune


def print_report(report: RetentionReport) -> None:
    print(f"outbox rows deleted          {report.outbox_deleted}")
    print(f"accepted inbound mail cut    {report.accepted_inbound_trimmed}")
    print(f"refused inbound mail cut     {report.refused_inbound_trimmed}")
    print(f"bytes freed                  {report.bytes_freed}")
    print(f"pending references deleted   {report.pending_references_deleted}")
    print(f"inbound failures deleted     {report.inbound_failures_deleted}")
    if report.dry_run:
        print("(a dry run: nothing was changed)")


def cmd_retention_run(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> RetentionReport:
        return await prune(session, settings.retention, now=datetime.now(UTC), dry_run=args.dry_run)

    report = run_in_session(settings, work)
    if args.json:
        print_json(report.as_dict())
    else:
        print_report(report)
    return 0


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("retention", help="prune old outbox rows, raw mail and references")
    retention = parser.add_subparsers(dest="retention_command", required=True)
    run = retention.add_parser("run", help="one retention pass now ([retention] days)")
    run.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=cmd_retention_run)
