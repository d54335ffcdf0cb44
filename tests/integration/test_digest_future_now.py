"""`digest run --now <future>` only chooses the window: what it queues goes out now, and the digest clock never
moves past real time, so a post made right after the pass is in the next digest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from qaflow_mail.config import Settings
from qaflow_mail.db.models import SubscriptionMode
from qaflow_mail.outbound.digest_run import run_digests
from qaflow_mail.outbound.render import Renderer
from tests.integration.test_digests import World, engines, renderer, text_of

__all__ = ["engines", "renderer"]  # fixtures


async def test_a_future_now_does_not_hide_later_posts(settings: Settings, engines: Any, renderer: Renderer) -> None:
    world = World(engines(settings))
    real = datetime.now(UTC).replace(microsecond=0)
    await world.category("general")
    await world.user("alice")
    await world.user("bob", tz="UTC")
    await world.subscribe("bob", "general", SubscriptionMode.DAILY, last=real - timedelta(days=2))
    await world.topic("Before", "general", "alice", real - timedelta(hours=1), "Made before the pass.")

    tomorrow = real + timedelta(days=1)
    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=tomorrow, period="daily",
                              not_after=real)
    assert stats.digests == 1
    [queued] = await world.outbox()
    assert queued.next_attempt_at <= real  # goes out now, not tomorrow
    last = await world.last_digest("bob", "general")
    assert last is not None and last <= real

    await world.topic("After", "general", "alice", real + timedelta(minutes=1), "Made right after the pass.")
    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=tomorrow + timedelta(days=1),
                              period="daily")
    assert stats.digests == 1
    texts = [text_of(row.raw) for row in await world.outbox()]
    assert any("Made right after the pass." in text for text in texts)
