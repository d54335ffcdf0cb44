"""Digests against a real database with a fake clock: who is due, what they get, the period boundaries, and
exactly once across re-runs, restarts and concurrent runs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.cli import build_parser
from qaflow_mail.commands.common import CommandError
from qaflow_mail.config import DigestSettings, Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import (
    BounceRecord,
    Category,
    CategorySubscription,
    MessageRef,
    Outbox,
    OutboxBody,
    OutboxKind,
    Post,
    SubscriptionMode,
    Topic,
    User,
    UserStatus,
)
from qaflow_mail.db.queries import find_digest_reference
from qaflow_mail.deps import Deps
from qaflow_mail.mail.tokens import TokenKind, verify
from qaflow_mail.outbound.digest_run import run_digests
from qaflow_mail.outbound.digest_schedule import Period
from qaflow_mail.outbound.render import Renderer
from qaflow_mail.outbound.sender import sending
from qaflow_mail.outbound.stored_bodies import whole_message
from qaflow_mail.replies import DIGEST_REPLY
from qaflow_mail.services.subscriptions import UnsubscribeResult, unsubscribe_by_token
from tests.polling import until
from tests.sink import SmtpSink
from tests.smtp_client import make_mail, send

SECRET = "test-secret-not-for-production"
JUNE_1_BERLIN_0700 = datetime(2025, 6, 1, 5, 0, tzinfo=UTC)  # 07:00 CEST
JUNE_2_BERLIN_0700 = datetime(2025, 6, 2, 5, 0, tzinfo=UTC)
RUN_AT = datetime(2025, 6, 2, 6, 0, tzinfo=UTC)
UTC_RUN_AT = datetime(2025, 6, 2, 7, 0, 30, tzinfo=UTC)  # just after a UTC reader's daily boundary


def delivering_to(sink: SmtpSink, settings: Settings) -> Settings:
    """`settings` whose outbox is sent to `sink`."""
    return dataclasses.replace(settings, outbound=dataclasses.replace(
        settings.outbound, transport="smtp", smtp_host="127.0.0.1", smtp_port=sink.port, poll_interval=0.05))


def https(settings: Settings, **digest: Any) -> Settings:
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, base_url="https://forum.test"),
        digest=dataclasses.replace(DigestSettings(), **digest),
    )


@pytest.fixture
async def engines() -> AsyncIterator[Callable[[Settings], async_sessionmaker[AsyncSession]]]:
    """Session factories, each on its own engine as a separate process would have; disposed at the end."""
    made = []

    def make(settings: Settings) -> async_sessionmaker[AsyncSession]:
        engine = create_engine(settings.database.url)
        made.append(engine)
        return session_factory(engine)

    yield make
    for engine in made:
        await engine.dispose()


class World:
    """A small forum built straight into the database, with explicit timestamps."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.ids: dict[str, int] = {}

    async def run(self, work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        async with self.sessions() as session, session.begin():
            return await work(session)

    async def category(self, slug: str) -> int:
        async def work(s: AsyncSession) -> int:
            c = Category(slug=slug, name=slug.title(), allow_strangers=False, created_at=JUNE_1_BERLIN_0700)
            s.add(c)
            await s.flush()
            return c.id
        self.ids[slug] = await self.run(work)
        return self.ids[slug]

    async def user(self, name: str, *, tz: str | None = None, status: str = UserStatus.ACTIVE, muted: bool = False,
                   admin: bool = False) -> int:
        async def work(s: AsyncSession) -> int:
            u = User(email=f"{name}@example.org", display_name=name.title(), timezone=tz, status=status,
                     announcements_muted=muted, is_admin=admin, created_at=datetime(2025, 1, 1, tzinfo=UTC))
            s.add(u)
            await s.flush()
            return u.id
        self.ids[name] = await self.run(work)
        return self.ids[name]

    async def subscribe(self, user: str, category: str, mode: SubscriptionMode, *,
                        last: datetime | None = JUNE_1_BERLIN_0700, created: datetime | None = None) -> None:
        async def work(s: AsyncSession) -> None:
            s.add(CategorySubscription(user_id=self.ids[user], category_id=self.ids[category], mode=mode.value,
                                       last_digest_at=last, created_at=created or datetime(2025, 1, 1, tzinfo=UTC)))
        await self.run(work)

    async def topic(self, key: str, category: str, author: str, at: datetime, text: str) -> int:
        async def work(s: AsyncSession) -> int:
            t = Topic(category_id=self.ids[category], author_id=self.ids[author], subject=key.replace("_", " "),
                      created_at=at, last_post_at=at)
            s.add(t)
            await s.flush()
            p = Post(topic_id=t.id, author_id=self.ids[author], message_id=f"{key}@client.test", subject=t.subject,
                     body_text=text, created_at=at)
            s.add(p)
            await s.flush()
            self.ids[f"post:{key}"] = p.id
            return t.id
        self.ids[key] = await self.run(work)
        return self.ids[key]

    async def reply(self, key: str, topic: str, author: str, at: datetime, text: str) -> int:
        async def work(s: AsyncSession) -> int:
            p = Post(topic_id=self.ids[topic], author_id=self.ids[author], message_id=f"{key}@client.test",
                     parent_id=self.ids[f"post:{topic}"], subject="Re", body_text=text, created_at=at)
            s.add(p)
            await s.flush()
            return p.id
        self.ids[key] = await self.run(work)
        return self.ids[key]

    async def outbox(self, kind: OutboxKind = OutboxKind.DIGEST) -> list[Outbox]:
        async def work(s: AsyncSession) -> list[Outbox]:
            found = list((await s.scalars(select(Outbox).where(Outbox.kind == kind.value).order_by(Outbox.id))).all())
            whole = [await whole_message(s, row.body_id, row.raw) for row in found]
            s.expunge_all()
            for row, raw in zip(found, whole, strict=True):
                row.raw = raw  # what the row sends: a digest's shared body filled in with the row's values
            return found
        rows: list[Outbox] = await self.run(work)
        return rows

    async def last_digest(self, user: str, category: str) -> datetime | None:
        async def work(s: AsyncSession) -> datetime | None:
            return await s.scalar(select(CategorySubscription.last_digest_at).where(
                CategorySubscription.user_id == self.ids[user],
                CategorySubscription.category_id == self.ids[category]))
        value: datetime | None = await self.run(work)
        return value


def parsed(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(raw: bytes) -> str:
    body = parsed(raw).get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


@pytest.fixture
def renderer() -> Renderer:
    return Renderer()


async def make_forum(world: World) -> None:
    for slug in ("general", "python", "announcements"):
        await world.category(slug)
    await world.user("alice", admin=True)
    await world.user("bob", tz="Europe/Berlin")
    await world.user("carol", tz="America/New_York")
    await world.user("dave", tz="Europe/Berlin", muted=True)
    await world.user("erin", tz="Europe/Berlin", status=UserStatus.DISABLED)
    await world.subscribe("alice", "general", SubscriptionMode.EACH)
    await world.subscribe("bob", "general", SubscriptionMode.DAILY)
    await world.subscribe("bob", "python", SubscriptionMode.DAILY)
    await world.subscribe("dave", "general", SubscriptionMode.DAILY)
    await world.subscribe("erin", "general", SubscriptionMode.DAILY)
    await world.subscribe("carol", "python", SubscriptionMode.WEEKLY, last=datetime(2025, 5, 26, 11, 0, tzinfo=UTC))

    await world.topic("Old_topic", "general", "alice", datetime(2025, 5, 20, 9, 0, tzinfo=UTC), "From May.")
    await world.reply("old_reply", "Old_topic", "carol", datetime(2025, 6, 1, 20, 0, tzinfo=UTC),
                      "A late answer to the old topic.")
    await world.topic("At_the_start", "general", "alice", JUNE_1_BERLIN_0700, "Exactly at the window start.")
    await world.topic("How_to_parse_mail", "python", "alice", datetime(2025, 6, 1, 10, 0, tzinfo=UTC),
                      "I need to parse mail.\nWith Python.\nLine three.\nLine four.\nLine five is not shown.")
    await world.reply("carol_answer", "How_to_parse_mail", "carol", datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
                      "Use the email package.")
    await world.reply("bob_own", "How_to_parse_mail", "bob", datetime(2025, 6, 1, 13, 0, tzinfo=UTC),
                      "Thanks, said Bob himself.")
    await world.topic("At_the_end", "general", "carol", JUNE_2_BERLIN_0700, "Exactly at the window end.")
    await world.topic("Too_late", "general", "carol", datetime(2025, 6, 2, 5, 30, tzinfo=UTC), "After the end.")
    await world.topic("Maintenance_tonight", "announcements", "alice", datetime(2025, 6, 1, 15, 0, tzinfo=UTC),
                      "The forum is down at 22:00.")


async def test_daily_digest_has_the_right_users_content_and_headers(
    settings: Settings, engines: Any, renderer: Renderer
) -> None:
    settings = https(settings)
    world = World(engines(settings))
    await make_forum(world)

    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=RUN_AT, period="daily")

    rows = await world.outbox()
    assert sorted(r.recipient for r in rows) == ["bob@example.org", "dave@example.org"]  # not erin (disabled)
    assert stats.digests == 2 and stats.users_due == 2
    bob = next(r for r in rows if r.recipient == "bob@example.org")
    assert bob.dedupe_key == f"digest:{world.ids['bob']}:daily:2025-06-02T05:00:00+00:00"
    assert bob.envelope_from.startswith("bounces+") and bob.envelope_from.endswith("@forum.test")

    message = parsed(bob.raw)
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("QAFlow Test digest", "notifications@forum.test")
    assert message["List-Id"] == '"QAFlow Test daily digest" <daily-digest.forum.test>'
    assert message["List-Post"] == "NO"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsub = str(message["List-Unsubscribe"])
    assert "<https://forum.test/unsubscribe/" in unsub and "<mailto:unsubscribe+" in unsub
    assert message["Reply-To"] is None
    assert message.get_body(("html",)) is not None
    assert message["Subject"].strip() == "[QAFlow Test] Daily digest: 1 announcement, 2 new topics, 2 new replies"

    text = text_of(bob.raw)
    # Announcements first, then new topics, then old topics with new replies.
    assert text.index("ANNOUNCEMENTS") < text.index("Maintenance tonight") < text.index("NEW TOPICS")
    assert text.index("NEW TOPICS") < text.index("How to parse mail") < text.index("NEW REPLIES")
    assert text.index("NEW REPLIES") < text.index("Old topic")
    assert "I need to parse mail.\n  With Python.\n  Line three.\n  Line four. …" in text
    assert "Line five" not in text
    assert "Use the email package." in text and "A late answer to the old topic." in text
    assert "Exactly at the window end." in text  # the end is inclusive
    assert "Exactly at the window start." not in text  # the start is exclusive
    assert "After the end." not in text
    assert "said Bob himself" not in text  # your own posts are not news to you
    assert "From May." not in text  # an older topic shows its new replies only
    assert "Stop General: https://forum.test/unsubscribe/" in text and "Stop Python:" in text

    # Each topic has its own reply address, bound to the recipient and the latest post the digest shows of it.
    addresses = [line.split(": ", 1)[1] for line in text.splitlines() if line.strip().startswith("Reply by email:")]
    assert len(addresses) == 3
    tokens = [a.removeprefix("reply+").split("@")[0] for a in addresses]
    ids = [verify(t, kind=TokenKind.REPLY, secrets=[SECRET], today=RUN_AT.date(), max_age_days=1).ids
           for t in tokens]
    # New topics newest first (by their latest post), then older topics with replies.
    assert ids == [(world.ids["post:At_the_end"], world.ids["bob"]), (world.ids["carol_answer"], world.ids["bob"]),
                   (world.ids["old_reply"], world.ids["bob"])]

    # dave muted announcements: none in his digest.
    dave_text = text_of(next(r for r in rows if r.recipient == "dave@example.org").raw)
    assert "ANNOUNCEMENTS" not in dave_text and "Maintenance tonight" not in dave_text

    # The digest's Message-ID is ours: recorded for the user, with no post.
    async def refs(s: AsyncSession) -> list[MessageRef]:
        return list((await s.scalars(select(MessageRef).where(MessageRef.kind == "digest"))).all())
    recorded = {r.message_id: r for r in await world.run(refs)}
    assert bob.message_id in recorded
    assert recorded[bob.message_id].user_id == world.ids["bob"] and recorded[bob.message_id].post_id is None
    assert await world.last_digest("bob", "general") == JUNE_2_BERLIN_0700
    assert await world.last_digest("bob", "python") == JUNE_2_BERLIN_0700
    assert await world.last_digest("erin", "general") == JUNE_1_BERLIN_0700


async def test_timezones_decide_who_is_due(settings: Settings, engines: Any, renderer: Renderer) -> None:
    world = World(engines(settings))
    await world.category("general")
    await world.user("alice")
    # Each user's last digest was at their previous boundary before 2 June.
    for name, tz, last in (
        ("berlin", "Europe/Berlin", datetime(2025, 6, 1, 5, 0, tzinfo=UTC)),  # next: 2 June 05:00 UTC
        ("newyork", "America/New_York", datetime(2025, 6, 1, 11, 0, tzinfo=UTC)),  # next: 2 June 11:00 UTC
        ("kolkata", "Asia/Kolkata", datetime(2025, 6, 1, 1, 30, tzinfo=UTC)),  # next: 2 June 01:30 UTC
        ("utc", None, datetime(2025, 6, 1, 7, 0, tzinfo=UTC)),  # site default UTC: next 2 June 07:00 UTC
    ):
        await world.user(name, tz=tz)
        await world.subscribe(name, "general", SubscriptionMode.DAILY, last=last)
    await world.topic("News", "general", "alice", datetime(2025, 6, 1, 12, 0, tzinfo=UTC), "Something new.")

    async def due_at(hour: int, minute: int = 0) -> set[str]:
        now = datetime(2025, 6, 2, hour, minute, tzinfo=UTC)
        await run_digests(world.sessions, settings=settings, renderer=renderer, now=now, period=Period.DAILY)
        return {r.recipient.split("@")[0] for r in await world.outbox()}

    assert await due_at(1, 29) == set()
    assert await due_at(1, 30) == {"kolkata"}
    assert await due_at(5, 0) == {"kolkata", "berlin"}
    assert await due_at(10, 59) == {"kolkata", "berlin", "utc"}
    assert await due_at(11, 0) == {"kolkata", "berlin", "utc", "newyork"}
    assert len(await world.outbox()) == 4


async def test_weekly_digest_on_the_weekly_day(settings: Settings, engines: Any, renderer: Renderer) -> None:
    world = World(engines(settings))
    await make_forum(world)
    sunday = datetime(2025, 6, 1, 23, 0, tzinfo=UTC)
    assert (await run_digests(world.sessions, settings=settings, renderer=renderer, now=sunday,
                              period="weekly")).digests == 0
    monday_morning_ny = datetime(2025, 6, 2, 11, 0, tzinfo=UTC)  # Monday 07:00 EDT
    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=monday_morning_ny,
                              period="weekly")
    assert stats.digests == 1
    (row,) = await world.outbox()
    assert row.recipient == "carol@example.org"
    assert row.dedupe_key.endswith(":weekly:2025-06-02T11:00:00+00:00")
    assert parsed(row.raw)["Subject"].strip().startswith("[QAFlow Test] Weekly digest:")
    text = text_of(row.raw)
    assert "How to parse mail" in text and "said Bob himself" in text  # carol follows python; bob's reply is news
    assert "Use the email package." not in text  # her own reply is not


async def test_nothing_new_means_no_digest_and_old_posts_never_come_back(
    settings: Settings, engines: Any, renderer: Renderer
) -> None:
    world = World(engines(settings))
    await world.category("general")
    await world.category("announcements")
    await world.user("alice", admin=True)
    await world.user("bob", tz="UTC")
    await world.subscribe("bob", "general", SubscriptionMode.DAILY, last=datetime(2025, 6, 1, 7, 0, tzinfo=UTC))
    # Only an announcement in the first window: everyone had it by broadcast, so it is no reason for a digest.
    await world.topic("Welcome", "announcements", "alice", datetime(2025, 6, 1, 9, 0, tzinfo=UTC), "Hi all.")

    day2 = datetime(2025, 6, 2, 7, 0, tzinfo=UTC)
    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=day2, period="daily")
    assert (stats.digests, stats.nothing_new) == (0, 1)
    assert await world.outbox() == []
    assert await world.last_digest("bob", "general") == day2  # advanced anyway

    await world.topic("Fresh", "general", "alice", datetime(2025, 6, 2, 9, 0, tzinfo=UTC), "Day two news.")
    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=day2 + timedelta(days=1),
                              period="daily")
    assert stats.digests == 1
    text = text_of((await world.outbox())[0].raw)
    assert "Day two news." in text and "Welcome" not in text and "ANNOUNCEMENTS" not in text


async def test_a_new_subscriber_starts_from_when_they_subscribed(
    settings: Settings, engines: Any, renderer: Renderer
) -> None:
    world = World(engines(settings))
    await world.category("general")
    await world.user("alice")
    await world.user("bob", tz="UTC")
    await world.topic("Before", "general", "alice", datetime(2025, 6, 1, 8, 0, tzinfo=UTC), "Before subscribing.")
    await world.subscribe("bob", "general", SubscriptionMode.DAILY, last=None,
                          created=datetime(2025, 6, 1, 9, 0, tzinfo=UTC))
    await world.topic("After", "general", "alice", datetime(2025, 6, 1, 10, 0, tzinfo=UTC), "After subscribing.")
    await run_digests(world.sessions, settings=settings, renderer=renderer,
                      now=datetime(2025, 6, 2, 7, 0, tzinfo=UTC), period="daily")
    text = text_of((await world.outbox())[0].raw)
    assert "After subscribing." in text and "Before subscribing." not in text


async def test_catch_up_after_downtime_is_one_digest(settings: Settings, engines: Any, renderer: Renderer) -> None:
    world = World(engines(settings))
    await world.category("general")
    await world.user("alice")
    await world.user("bob", tz="UTC")
    await world.subscribe("bob", "general", SubscriptionMode.DAILY, last=datetime(2025, 6, 1, 7, 0, tzinfo=UTC))
    for day in (1, 2, 3, 4):
        await world.topic(f"Day_{day}", "general", "alice", datetime(2025, 6, day, 12, 0, tzinfo=UTC), f"News {day}.")
    # The scheduler was down from 1 June until 5 June 09:00: the first run catches up.
    now = datetime(2025, 6, 5, 9, 0, tzinfo=UTC)
    stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=now, period="daily")
    assert stats.digests == 1
    (row,) = await world.outbox()
    assert row.dedupe_key.endswith(":daily:2025-06-05T07:00:00+00:00")
    text = text_of(row.raw)
    assert all(f"News {day}." in text for day in (1, 2, 3, 4))
    assert await world.last_digest("bob", "general") == datetime(2025, 6, 5, 7, 0, tzinfo=UTC)


async def test_exactly_once_across_reruns_restarts_and_sending(
    settings: Settings, engines: Any, renderer: Renderer
) -> None:
    async with SmtpSink() as sink:
        settings = delivering_to(sink, settings)
        world = World(engines(settings))
        await make_forum(world)
        first = await run_digests(world.sessions, settings=settings, renderer=renderer, now=RUN_AT, period="daily")
        assert first.digests == 2
        # Re-run in the same period, later that day: nothing more.
        again = await run_digests(world.sessions, settings=settings, renderer=renderer,
                                  now=RUN_AT + timedelta(hours=20), period="daily")
        assert (again.digests, again.users_due) == (0, 0)

        # "Restart" between enqueue and send: a fresh engine (a new process), run once more, then send.
        restarted = engines(settings)
        after_restart = await run_digests(restarted, settings=settings, renderer=renderer,
                                          now=RUN_AT + timedelta(hours=1), period="daily")
        assert after_restart.digests == 0
        deps = Deps.build(settings, restarted)
        async with sending(deps) as sender:
            sender.wake()
            delivered = await sink.wait_for(2)
        assert sorted(m.rcpt_tos[0] for m in delivered) == ["bob@example.org", "dave@example.org"]
        assert len(await world.outbox()) == 2
        after_send = await run_digests(restarted, settings=settings, renderer=renderer,
                                       now=RUN_AT + timedelta(hours=2), period="daily")
        assert after_send.digests == 0
        assert len(sink.messages) == 2


async def test_a_digest_many_share_is_stored_once_and_each_reader_gets_it_whole_with_their_own_links(
    settings: Settings, engines: Any, renderer: Renderer
) -> None:
    async with SmtpSink() as sink:
        settings = delivering_to(sink, https(settings))
        world = World(engines(settings))
        await world.category("general")
        await world.user("alice")
        readers = [f"reader{n}" for n in range(6)]
        for name in readers:
            await world.user(name, tz="UTC")
            await world.subscribe(name, "general", SubscriptionMode.DAILY, last=datetime(2025, 6, 1, 7, 0, tzinfo=UTC))
        await world.topic("Hello", "general", "alice", datetime(2025, 6, 1, 12, 0, tzinfo=UTC), "Hello everyone.")
        stats = await run_digests(world.sessions, settings=settings, renderer=renderer, now=UTC_RUN_AT,
                                  period="daily")
        assert stats.digests == 6

        async def stored(session: AsyncSession) -> tuple[list[tuple[int | None, int]], int]:
            rows = (await session.execute(select(Outbox.body_id, func.length(Outbox.raw)))).all()
            bodies = await session.scalar(select(func.count(OutboxBody.id)))
            return [(body_id, size) for body_id, size in rows], int(bodies or 0)

        rows, bodies = await world.run(stored)
        assert bodies == 1 and len({body_id for body_id, _ in rows}) == 1 and None not in {b for b, _ in rows}
        assert all(size < 1024 for _, size in rows), rows  # each row: its reader's values, not the digest
        expected = {row.recipient: row.raw for row in await world.outbox()}  # filled in from the stored body

        async with sending(Deps.build(settings, world.sessions)) as sender:
            sender.wake()
            delivered = await sink.wait_for(6)
    assert sorted(m.rcpt_tos[0] for m in delivered) == sorted(f"{name}@example.org" for name in readers)
    for message in delivered:
        reader = message.rcpt_tos[0]
        assert message.raw.replace(b"\r\n", b"\n").endswith(expected[reader].replace(b"\r\n", b"\n"))
        headers = parsed(expected[reader])
        assert headers["To"].addresses[0].addr_spec == reader
        token = str(headers["List-Unsubscribe"]).split("/unsubscribe/", 1)[1].split(">", 1)[0]
        payload = verify(token, kind=TokenKind.DIGEST, secrets=[SECRET], today=UTC_RUN_AT.date(),
                         max_age_days=1)
        assert payload.ids[0] == world.ids[reader.split("@")[0]]


async def test_a_row_whose_stored_body_cannot_be_made_whole_fails_once_for_good(
    settings: Settings, engines: Any, renderer: Renderer
) -> None:
    async with SmtpSink() as sink:
        settings = delivering_to(sink, settings)
        world = World(engines(settings))
        await make_forum(world)
        assert (await run_digests(world.sessions, settings=settings, renderer=renderer, now=RUN_AT,
                                  period="daily")).digests == 2

        async def spoil_one(session: AsyncSession) -> None:
            body_id = await session.scalar(select(Outbox.body_id).where(Outbox.recipient == "dave@example.org"))
            await session.execute(update(OutboxBody).where(OutboxBody.id == body_id).values(data=b"{not json"))

        await world.run(spoil_one)
        async with sending(Deps.build(settings, world.sessions)) as sender:
            sender.wake()
            (delivered,) = await sink.wait_for(1)

            async def dave_failed(session: AsyncSession) -> bool:
                row = await session.scalar(select(Outbox).where(Outbox.recipient == "dave@example.org"))
                return row is not None and row.status == "failed"

            await until(lambda: world.run(dave_failed), what="dave's row failed")
    assert list(delivered.rcpt_tos) == ["bob@example.org"]

    async def dave(session: AsyncSession) -> tuple[int, str, int]:
        row = await session.scalar(select(Outbox).where(Outbox.recipient == "dave@example.org"))
        assert row is not None
        bounces = await session.scalar(select(func.count(BounceRecord.id)))
        return row.attempts, row.last_error, int(bounces or 0)

    attempts, error, bounces = await world.run(dave)
    assert attempts == 1 and "cannot be made whole" in error
    assert bounces == 0  # the row was at fault, not Dave's address


async def test_a_crash_mid_run_loses_and_doubles_nothing(
    settings: Settings, engines: Any, renderer: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qaflow_mail.outbound import digest_run as digests_module
    from qaflow_mail.outbound.outbox import enqueue as real_enqueue

    world = World(engines(settings))
    await world.category("general")
    await world.user("alice")
    for n in range(10):
        await world.user(f"user{n}", tz="UTC")
        await world.subscribe(f"user{n}", "general", SubscriptionMode.DAILY,
                              last=datetime(2025, 6, 1, 7, 0, tzinfo=UTC))
    await world.topic("Hello", "general", "alice", datetime(2025, 6, 1, 12, 0, tzinfo=UTC), "Hello everyone.")
    calls = 0

    async def crash_on_second_batch(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the process died here")
        await real_enqueue(*args, **kwargs)

    monkeypatch.setattr(digests_module, "enqueue", crash_on_second_batch)
    now = datetime(2025, 6, 2, 7, 0, 30, tzinfo=UTC)
    with pytest.raises(RuntimeError, match="died"):
        await run_digests(world.sessions, settings=settings, renderer=renderer, now=now, period="daily", batch_size=4)
    assert len(await world.outbox()) == 4  # the first batch committed; the second rolled back whole
    monkeypatch.setattr(digests_module, "enqueue", real_enqueue)
    again = await run_digests(world.sessions, settings=settings, renderer=renderer, now=now, period="daily",
                              batch_size=4)
    assert again.digests == 6
    rows = await world.outbox()
    assert len(rows) == 10 and len({r.recipient for r in rows}) == 10


async def test_concurrent_runs_enqueue_each_digest_once(settings: Settings, engines: Any, renderer: Renderer) -> None:
    world = World(engines(settings))
    await world.category("general")
    await world.user("alice")
    for n in range(30):
        await world.user(f"user{n}", tz=("Europe/Berlin", "UTC", None)[n % 3])
        await world.subscribe(f"user{n}", "general", SubscriptionMode.DAILY,
                              last=datetime(2025, 5, 31, 12, 0, tzinfo=UTC))
    await world.topic("Hello", "general", "alice", datetime(2025, 6, 1, 12, 0, tzinfo=UTC), "Hello everyone.")

    # Two "processes" (own engines), small batches so that they interleave.
    runs = [
        run_digests(engines(settings), settings=settings, renderer=renderer, now=RUN_AT + timedelta(hours=2),
                    period="daily", batch_size=4)
        for _ in range(3)
    ]
    results = await asyncio.gather(*runs)
    assert sum(r.digests for r in results) == 30
    rows = await world.outbox()
    assert len(rows) == 30 and len({r.recipient for r in rows}) == 30

    async def ref_count(s: AsyncSession) -> int:
        return int(await s.scalar(select(func.count(MessageRef.id)).where(MessageRef.kind == "digest")) or 0)
    assert await world.run(ref_count) == 30


async def test_replies_from_a_digest(settings: Settings, engines: Any, renderer: Renderer) -> None:
    """A topic's own address in the digest posts into that topic; a reply to the digest as a whole is recognised."""
    from qaflow_mail.server.app import running

    world = World(engines(settings))
    await make_forum(world)
    await run_digests(world.sessions, settings=settings, renderer=renderer, now=RUN_AT, period="daily")
    bob_row = next(r for r in await world.outbox() if r.recipient == "bob@example.org")
    text = text_of(bob_row.raw)
    entry = text[text.index("How to parse mail"):]
    topic_address = entry[entry.index("Reply by email: ") + len("Reply by email: "):].split()[0]

    async with running(settings, clock=lambda: RUN_AT + timedelta(hours=1)) as run:
        reply = make_mail(sender="bob@example.org", to=topic_address, subject="Re: digest",
                          body="Thanks, the email package worked.", in_reply_to=f"<{bob_row.message_id}>")
        conv = await send(run.smtp_port, reply, mail_from="bob@example.org", rcpt_tos=[topic_address])
        assert conv.data_code == 250, conv

        # Replying to the digest itself (its From), or sending that reply to a category: told how to reply.
        for rcpt in ("notifications@forum.test", "general@forum.test"):
            whole = make_mail(sender="bob@example.org", to=rcpt, subject="Re: [QAFlow Test] Daily digest",
                              body="Thanks for all of these!", in_reply_to=f"<{bob_row.message_id}>")
            conv = await send(run.smtp_port, whole, mail_from="bob@example.org", rcpt_tos=[rcpt])
            assert conv.rcpts[rcpt][0] == 250
            assert conv.data is not None and conv.data[0] == 550, conv
            assert conv.data[1].startswith("5.7.1") and "reply to the address given under the topic" in conv.data[1]
        stray = make_mail(sender="bob@example.org", to="notifications@forum.test", subject="Hello?", body="Hi")
        conv = await send(run.smtp_port, stray, mail_from="bob@example.org", rcpt_tos=["notifications@forum.test"])
        assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.1.1")
        assert "takes no mail" in conv.data[1]

    async def posts_thanking(s: AsyncSession) -> int:
        return len((await s.scalars(select(Post.id).where(Post.body_text.like("%Thanks for all%")))).all())
    assert await world.run(posts_thanking) == 0

    async def new_post(s: AsyncSession) -> Post | None:
        return await s.scalar(select(Post).where(Post.body_text.like("%email package worked%")))
    post = await world.run(new_post)
    assert post is not None
    assert post.topic_id == world.ids["How_to_parse_mail"] and post.parent_id == world.ids["carol_answer"]

    async def lookup(s: AsyncSession) -> MessageRef | None:
        return await find_digest_reference(s, ["unknown@client.test", bob_row.message_id])
    ref = await world.run(lookup)
    assert ref is not None and ref.user_id == world.ids["bob"]
    assert DIGEST_REPLY.code == 550 and "reply to the address given under the topic" in DIGEST_REPLY.text


async def test_the_digest_unsubscribe_stops_the_whole_digest_and_a_footer_link_one_category(
    settings: Settings, engines: Any, renderer: Renderer
) -> None:
    settings = https(settings)
    world = World(engines(settings))
    await make_forum(world)
    await run_digests(world.sessions, settings=settings, renderer=renderer, now=RUN_AT, period="daily")
    bob = next(r for r in await world.outbox() if r.recipient == "bob@example.org")
    header_token = str(parsed(bob.raw)["List-Unsubscribe"]).split("/unsubscribe/", 1)[1].split(">", 1)[0]
    footer_token = text_of(bob.raw).split("Stop Python: https://forum.test/unsubscribe/", 1)[1].split()[0]

    async def unsubscribe(token: str) -> UnsubscribeResult:
        async def work(s: AsyncSession) -> UnsubscribeResult:
            return await unsubscribe_by_token(s, token, settings, RUN_AT)
        return await world.run(work)

    async def modes(user: str) -> dict[str, str]:
        async def work(s: AsyncSession) -> dict[str, str]:
            rows = await s.execute(select(Category.slug, CategorySubscription.mode).join(
                CategorySubscription, CategorySubscription.category_id == Category.id).where(
                CategorySubscription.user_id == world.ids[user]))
            return {slug: mode for slug, mode in rows}
        return await world.run(work)

    assert (await unsubscribe(footer_token)).changed  # a footer link: that category only
    assert await modes("bob") == {"general": "daily", "python": "mute"}

    result = await unsubscribe(header_token)  # the mail client's button: the whole daily digest
    assert result.changed and result.digest_mode == SubscriptionMode.DAILY
    assert await modes("bob") == {"general": "mute", "python": "mute"}
    assert (await unsubscribe(header_token)).status.value == "already"
    assert await modes("alice") == {"general": "each"}  # mail post by post is not a digest


async def test_the_scheduler_catches_up_at_start_and_declares_its_jobs(
    settings: Settings, engines: Any, renderer: Renderer
) -> None:
    from qaflow_mail.server.scheduler import scheduling

    settings = dataclasses.replace(settings, digest=DigestSettings(daily_at="07:20", timezone="Europe/Berlin"))
    world = World(engines(settings))
    await make_forum(world)
    deps = Deps.build(settings, world.sessions, clock=lambda: RUN_AT, renderer=renderer)
    async with scheduling(deps) as scheduler:
        jobs = {job.id: job for job in scheduler.aps.get_jobs()}
        assert set(jobs) == {"digest-daily", "digest-weekly", "reattach-orphans", "retention"}
        for job in (jobs["digest-daily"], jobs["digest-weekly"]):
            assert (job.coalesce, job.max_instances, job.misfire_grace_time) == (True, 1, 6 * 3600)
            assert str(job.trigger) == "cron[minute='5/15', second='30']"
        deadline = asyncio.get_running_loop().time() + 10
        while scheduler.runs < 2:  # the start-up (catch-up) run of both jobs
            assert asyncio.get_running_loop().time() < deadline, "the start-up runs did not happen"
            await asyncio.sleep(0.01)
        assert scheduler.last_stats[Period.DAILY].digests == 2
        assert scheduler.last_stats[Period.WEEKLY].digests == 0  # carol's week ended Monday 26 May 07:20 EDT
    assert not scheduler.aps.running
    assert len(await world.outbox()) == 2


def _cli(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_digest_run_and_user_set_from_the_command_line(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed() -> None:
        engine = create_engine(settings.database.url)
        await make_forum(World(session_factory(engine)))
        await engine.dispose()

    asyncio.run(seed())
    args = _cli("user", "set", "bob@example.org", "--timezone", "Asia/Kolkata")
    assert args.func(settings, args) == 0
    assert "Asia/Kolkata" in capsys.readouterr().out
    with pytest.raises(CommandError, match="unknown time zone"):
        args = _cli("user", "set", "bob@example.org", "--timezone", "Mars/Base")
        args.func(settings, args)
    with pytest.raises(CommandError, match="no user"):
        args = _cli("user", "set", "nobody@example.org", "--timezone", "UTC")
        args.func(settings, args)

    # 2 June 06:00 UTC: dave (Berlin) is due; bob, now in Kolkata, was due since 01:30 UTC; carol (weekly) not.
    args = _cli("digest", "run", "--now", "2025-06-02T08:00:00+02:00", "--json")
    assert args.func(settings, args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["now"] == "2025-06-02T06:00:00+00:00"
    assert [(r["period"], r["digests"]) for r in out["runs"]] == [("daily", 2), ("weekly", 0)]

    args = _cli("user", "set", "bob@example.org", "--timezone", "default")
    assert args.func(settings, args) == 0
    assert "site default (UTC)" in capsys.readouterr().out
    args = _cli("digest", "run", "--period", "daily", "--now", "2025-06-02T06:30:00")
    assert args.func(settings, args) == 0
    assert capsys.readouterr().out.startswith("daily: 0 digest(s) queued")
    with pytest.raises(CommandError, match="--now must be an ISO time"):
        args = _cli("digest", "run", "--now", "tomorrow")
        args.func(settings, args)


def test_build_digest_is_pure_caps_topics_and_the_html_part_escapes(renderer: Renderer) -> None:
    from zoneinfo import ZoneInfo

    from qaflow_mail.config import SiteSettings, TokensSettings
    from qaflow_mail.outbound.digest_build import DigestRecipient, PostRow, SubscriptionWindow, TopicRow, build_digest

    settings = Settings(site=SiteSettings(name="QAFlow", domain="forum.test", base_url="https://forum.test"),
                        tokens=TokensSettings(secret=SECRET), digest=DigestSettings(max_topics=3))
    start, end = datetime(2025, 6, 1, 7, tzinfo=UTC), datetime(2025, 6, 2, 7, tzinfo=UTC)
    topics = {
        n: TopicRow(id=n, category_id=1, category_name="General", subject=f"<script>alert({n})</script>",
                    author_id=9, author_name="Mallory <b>", created_at=start + timedelta(hours=n), opening_post_id=n,
                    is_announcement=False)
        for n in range(1, 6)
    }
    posts = [PostRow(id=n, topic_id=n, author_id=9, author_name="Mallory <b>", created_at=start + timedelta(hours=n),
                     text=f"Body {n} <img src=x onerror=alert(1)>") for n in range(1, 6)]
    recipient = DigestRecipient(user_id=7, email="bob@example.org", name="Bob", timezone=ZoneInfo("UTC"),
                                show_announcements=True)
    window = SubscriptionWindow(category_id=1, category_slug="general", category_name="General", start=start,
                                end=end)
    digest = build_digest(period=Period.DAILY, recipient=recipient, windows=[window], topics=topics, posts=posts,
                          settings=settings, issued=end.date())
    assert [t.id for t in digest.new_topics] == [5, 4, 3] and digest.omitted_topics == 2
    assert build_digest(period=Period.DAILY, recipient=recipient, windows=[window], topics=topics, posts=posts,
                        settings=settings, issued=end.date()) == digest
    rendered = renderer.render("digest/daily", digest.template_values())
    assert rendered.html is not None
    assert "<script>" not in rendered.html and "&lt;script&gt;alert(5)&lt;/script&gt;" in rendered.html
    assert "<img" not in rendered.html and "Mallory &lt;b&gt;" in rendered.html
    assert "<script>alert(5)</script>" in rendered.text  # the text part is text: nothing to escape
    assert "...and 2 more topics on https://forum.test" in rendered.text
