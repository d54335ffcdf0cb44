"""How long the fan-out of one post to its "each" subscribers takes, and how long bulk imports take.

    python bench/notify_fanout.py [--recipients 10000] [--lines 100000] [--body-kb 2] [--url DATABASE_URL]

Against a fresh SQLite file (or --url, e.g. postgresql+asyncpg://postgres@127.0.0.1/bench, whose tables are
dropped and recreated) it measures, each in its own transaction including the commit:
  1. `user add --file`: bulk_add_users over --lines new addresses;
  2. `subscribe --file`: bulk_subscribe of the same addresses to a category (users exist, subscriptions new);
  3. the same again (everything exists: the "skip" path);
  4. one new topic and one reply fanned out to --recipients "each" subscribers (outbox rows written).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.config import Settings, SiteSettings, TokensSettings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory, upgrade
from qaflow_mail.db.models import Base, Category, Outbox, Post, SubscriptionMode
from qaflow_mail.outbound.notify import enqueue_post_notifications
from qaflow_mail.outbound.render import Renderer
from qaflow_mail.services.bulk_import import bulk_add_users, bulk_subscribe

T = TypeVar("T")


async def timed(sessions: async_sessionmaker[AsyncSession], label: str,
                work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    started = time.perf_counter()
    async with sessions() as session, session.begin():
        result = await work(session)
    elapsed = time.perf_counter() - started
    print(f"{label:<58} {elapsed:8.2f} s")
    return result


async def prepare_schema(url: str) -> None:
    if url.startswith("sqlite"):
        await asyncio.to_thread(upgrade, url)
        return
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    url = args.url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix='qaflow-bench-')) / 'bench.db'}"
    await prepare_schema(url)
    settings = Settings(
        site=SiteSettings(name="QAFlow Bench", domain="forum.example", base_url="https://forum.example"),
        tokens=TokensSettings(secret="bench-secret"),
    )
    engine = create_engine(url)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    lines = [f"Member {i} <member{i}@list{i % 97}.example.org>" for i in range(args.lines)]
    print(f"database: {engine.dialect.name}; {args.lines} import lines; {args.recipients} recipients")

    async def setup(session: AsyncSession) -> tuple[int, int]:
        big = await queries.add_category(session, slug="imported", name="Imported", allow_strangers=False)
        fan = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        return big.id, fan.id

    big_id, fan_id = await timed(sessions, "setup", setup)

    report = await timed(sessions, f"user add --file ({args.lines} new users)",
                         lambda s: bulk_add_users(s, lines, now))
    assert report.users_created == args.lines, report

    async def subscribe_all(session: AsyncSession) -> object:
        category = await session.get(Category, big_id)
        assert category is not None
        return await bulk_subscribe(session, lines, category, SubscriptionMode.DAILY, now)

    await timed(sessions, f"subscribe --file ({args.lines} existing users, new subscriptions)", subscribe_all)
    await timed(sessions, f"subscribe --file again ({args.lines} lines, all existing)", subscribe_all)

    async def subscribe_fanout(session: AsyncSession) -> object:
        category = await session.get(Category, fan_id)
        assert category is not None
        return await bulk_subscribe(session, lines[: args.recipients + 1], category, SubscriptionMode.EACH, now)

    await timed(sessions, f"subscribe --file ({args.recipients + 1} lines, fan-out category)", subscribe_fanout)

    async def make_posts(session: AsyncSession) -> tuple[Post, Post]:
        author = await queries.user_by_email(session, "member0@list0.example.org")
        assert author is not None
        topic = await queries.create_topic(session, category_id=fan_id, author_id=author.id,
                                           subject="A question for everyone", now=now)
        body = ("Some words about the question, with a little detail. " * 20 + "\n\n") * max(1, args.body_kb)
        first = Post(topic_id=topic.id, author_id=author.id, parent_id=None, message_id="bench-1@client.example",
                     subject=topic.subject, body_text=body, body_html=None, source="smtp", created_at=now)
        session.add(first)
        await session.flush()
        reply = Post(topic_id=topic.id, author_id=author.id, parent_id=first.id,
                     message_id="bench-2@client.example", subject="Re: " + topic.subject,
                     body_text="Ünïcode reply text: " + body, body_html=None, source="smtp", created_at=now)
        session.add(reply)
        await session.flush()
        return first, reply

    first, reply = await timed(sessions, "two posts", make_posts)
    renderer = Renderer()
    for label, post in (("new topic", first), ("reply (quoted-printable body)", reply)):
        count = await timed(
            sessions, f"fan-out of the {label} to each subscribers",
            lambda s, p=post: enqueue_post_notifications(s, settings=settings, renderer=renderer, post=p, now=now),
        )
        print(f"  {count} messages")

    async with sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(Outbox))
        size = await session.scalar(select(func.avg(func.length(Outbox.raw))))
    print(f"outbox rows: {rows}, average message size {float(size or 0):.0f} bytes")
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--body-kb", type=int, default=2, help="approximate post body size in KB")
    parser.add_argument("--url", help="database URL (default: a new SQLite file in a temporary directory)")
    arguments = parser.parse_args()
    if arguments.recipients + 1 > arguments.lines:
        sys.exit("--lines must exceed --recipients")
    asyncio.run(main(arguments))
