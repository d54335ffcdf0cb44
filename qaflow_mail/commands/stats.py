"""`qaflow-mail stats [--json]`: the figures /metrics serves, and what the next retention pass would prune."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import Subparsers, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.services.metrics import snapshot
from qaflow_mail.services.retention import prune


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "none"


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> dict[str, Any]:
        now = datetime.now(UTC)
        figures = (await snapshot(session, now=now)).as_dict()
        due = await prune(session, settings.retention, now=now, dry_run=True)
        return {**figures, "retention_due": {k: v for k, v in due.as_dict().items() if k != "dry_run"}}

    data = run_in_session(settings, work)
    if args.json:
        print_json(data)
        return 0
    print(f"inbound      {_counts(data['inbound_by_disposition'])}")
    print(f"outbox       {_counts(data['outbox_by_status'])}")
    print(f"  waiting    {_counts(data['outbox_pending_by_kind'])}; oldest "
          f"{data['oldest_pending_outbox_seconds']:.0f} s")
    print(f"shunted      {data['shunted']}")
    print(f"posts        {_counts(data['posts_by_status'])}")
    print(f"users        {_counts(data['users_by_status'])}; {data['bouncing_users']} bouncing, "
          f"{data['bounces']} bounce(s) recorded")
    print(f"topics       {data['topics']} in {data['categories']} categories")
    print(f"deliveries   {_counts(data['deliveries'])}")
    runs = data["digest_runs"]
    digests = "; ".join(f"{period} last run {run['last_run_at']} ({run['last_digests']} queued), "
                        f"{run['digests_total']} in all" for period, run in runs.items())
    print(f"digests      {digests or 'no run yet'}")
    scores = data["bounce_scores"]["buckets"]
    print("bounce score " + ", ".join(f"<= {le}: {n}" for le, n in scores.items()) + " user(s)")
    print(f"retention    due now: {_counts(data['retention_due'])}")
    return 0


def register(subparsers: Subparsers) -> None:
    stats = subparsers.add_parser("stats", help="the gateway's figures (what /metrics serves)")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)
