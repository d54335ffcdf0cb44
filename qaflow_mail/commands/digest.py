"""`digest run [--period daily|weekly] [--now ISO-TIME] [--dry-run] [--json]`: one digest pass (both periods by
default); with --dry-run, who would get which digest, with nothing queued and no digest clock moved."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json
from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.outbound.digest_run import DigestStats, run_digests
from qaflow_mail.outbound.digest_schedule import Period
from qaflow_mail.outbound.render import Renderer


def parse_now(value: str | None) -> datetime:
    """--now: an ISO 8601 time; without an offset it is taken as UTC."""
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--now must be an ISO time such as 2025-06-02T07:00:00+02:00, got {value!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def cmd_digest_run(settings: Settings, args: argparse.Namespace) -> int:
    now = parse_now(args.now)
    periods = [Period(args.period)] if args.period else [Period.DAILY, Period.WEEKLY]
    renderer = Renderer()

    async def work() -> list[DigestStats]:
        engine = create_engine(settings.database.url)
        try:
            sessions = session_factory(engine)
            return [await run_digests(sessions, settings=settings, renderer=renderer, now=now, period=period,
                                      not_after=datetime.now(UTC), dry_run=args.dry_run)
                    for period in periods]
        finally:
            await engine.dispose()

    results = asyncio.run(work())
    if args.json:
        print_json({"now": iso(now), "runs": [r.as_dict() for r in results]})
    elif args.dry_run:
        for r in results:
            for p in r.previews:
                print(f"{p.period:<7} {p.email:<40} {p.topics:>3} topic(s)  {iso(p.start)} .. {iso(p.end)}")
            print(f"{r.period}: {r.digests} digest(s) would be queued, {r.nothing_new} user(s) with nothing new, "
                  f"{r.users_due} due at {iso(now)} (dry run: nothing queued, no clock moved)")
    else:
        for r in results:
            print(f"{r.period}: {r.digests} digest(s) queued, {r.nothing_new} user(s) with nothing new, "
                  f"{r.users_due} due at {iso(now)}")
    return 0


def register(subparsers: Subparsers) -> None:
    digest = subparsers.add_parser("digest", help="daily and weekly digests").add_subparsers(
        dest="digest_command", required=True)
    run = digest.add_parser("run", help="one digest pass now (or at --now): whatever is due is queued, once")
    run.add_argument("--period", choices=[p.value for p in Period], help="default: both")
    run.add_argument("--now", help="the time of the pass, ISO 8601 (default: now; no offset means UTC)")
    run.add_argument("--dry-run", action="store_true",
                     help="print who would get which digest (user, period, topics); queue nothing, move no clock")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=cmd_digest_run)
