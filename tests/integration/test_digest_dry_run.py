"""`digest run --dry-run`: who would get which digest (user, period, topics), with nothing queued and no digest
clock moved; a real pass records its time and count in digest_runs (what /metrics serves)."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from qaflow_mail.cli import build_parser
from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import DigestRun, SubscriptionMode
from qaflow_mail.outbound.digest_run import run_digests
from qaflow_mail.outbound.render import Renderer
from tests.integration.test_digests import JUNE_1_BERLIN_0700, RUN_AT, World, engines, renderer

__all__ = ["engines", "renderer"]  # fixtures


async def _forum(world: World) -> None:
    await world.category("general")
    await world.category("help")
    await world.user("alice")
    await world.user("bob", tz="UTC")
    await world.user("carol", tz="UTC")
    await world.subscribe("bob", "general", SubscriptionMode.DAILY)
    await world.subscribe("bob", "help", SubscriptionMode.DAILY)
    await world.subscribe("carol", "help", SubscriptionMode.WEEKLY)
    await world.subscribe("carol", "general", SubscriptionMode.DAILY)
    start = JUNE_1_BERLIN_0700 + timedelta(hours=1)  # inside the window ending 07:00 UTC on June 1
    await world.topic("One", "general", "alice", start, "first")
    await world.topic("Two", "general", "alice", start + timedelta(minutes=1), "second")
    await world.topic("Three", "help", "alice", start + timedelta(minutes=2), "third")


async def _digest_runs(world: World) -> dict[str, tuple[datetime, int, int]]:
    async def work(s: Any) -> dict[str, tuple[datetime, int, int]]:
        rows = await s.scalars(select(DigestRun))
        return {r.period: (r.last_run_at, r.last_digests, r.digests_total) for r in rows}
    result: dict[str, tuple[datetime, int, int]] = await world.run(work)
    return result


async def test_a_dry_run_lists_the_digests_and_changes_nothing(settings: Settings, engines: Any,
                                                                renderer: Renderer) -> None:
    world = World(engines(settings))
    await _forum(world)
    before = {(u, c): await world.last_digest(u, c) for u, c in [("bob", "general"), ("bob", "help"),
                                                                  ("carol", "general")]}

    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=RUN_AT, period="daily",
                              dry_run=True)
    assert [(p.email, p.period, p.topics) for p in stats.previews] == [
        ("bob@example.org", "daily", 3), ("carol@example.org", "daily", 2)]
    assert stats.dry_run and stats.digests == 2
    assert stats.as_dict()["would_send"][0]["topics"] == 3
    assert await world.outbox() == []
    assert {k: await world.last_digest(*k) for k in before} == before
    assert await _digest_runs(world) == {}

    # The real pass queues exactly what the dry run showed, and records itself.
    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=RUN_AT, period="daily")
    assert stats.digests == 2 and stats.previews == ()
    assert sorted(row.recipient for row in await world.outbox()) == ["bob@example.org", "carol@example.org"]
    assert await _digest_runs(world) == {"daily": (RUN_AT, 2, 2)}
    later = RUN_AT + timedelta(days=1)
    await run_digests(world.sessions, settings=settings, renderer=renderer, now=later, period="daily")
    assert await _digest_runs(world) == {"daily": (later, 0, 2)}  # nothing new: the run counts, the total stays


def test_the_dry_run_command_prints_who_would_get_what(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    async def arrange() -> None:
        engine = create_engine(settings.database.url)
        try:
            await _forum(World(session_factory(engine)))
        finally:
            await engine.dispose()

    asyncio.run(arrange())
    args: argparse.Namespace = build_parser().parse_args(
        ["digest", "run", "--period", "daily", "--dry-run", "--now", RUN_AT.isoformat()])
    assert args.func(settings, args) == 0
    out = capsys.readouterr().out
    assert "bob@example.org" in out and "3 topic(s)" in out
    assert "2 digest(s) would be queued" in out and "nothing queued, no clock moved" in out

    args = build_parser().parse_args(["digest", "run", "--period", "daily", "--dry-run", "--json", "--now",
                                      RUN_AT.isoformat()])
    assert args.func(settings, args) == 0  # a dry run twice shows the same: it moved nothing
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert [(w["email"], w["topics"]) for w in run["would_send"]] == [("bob@example.org", 3),
                                                                      ("carol@example.org", 2)]
    assert datetime.fromisoformat(run["would_send"][0]["end"]) <= datetime.now(UTC)
