"""How long one daily digest pass takes for many subscribers, and how much memory it needs.

    python bench/digests.py [--users 100000] [--categories 50] [--topics 500] [--posts 2000] [--url DATABASE_URL]

Against a fresh SQLite file (or --url, e.g. postgresql+asyncpg://postgres@127.0.0.1/bench, whose tables are
dropped and recreated), written with bulk inserts: --users active users, each following one to three of
--categories categories in "daily" mode (last digest at the previous boundary), and a day of posts: --topics
topics spread over the categories, --posts posts among them (bodies of 300-1,500 characters), all inside the
window that ends at the latest daily boundary. Then ONE `run_digests` pass renders and queues every digest.
Prints its wall time, digests/s, the outbox rows and shared bodies written, and the process's RSS before the pass and
its peak.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from notify_fanout import prepare_schema

from qaflow_mail.config import Settings, SiteSettings, TokensSettings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import (
    Category,
    CategorySubscription,
    Outbox,
    OutboxBody,
    Post,
    SubscriptionMode,
    Topic,
    User,
)
from qaflow_mail.outbound.digest_run import run_digests
from qaflow_mail.outbound.digest_schedule import DigestSchedule, Period, window_end
from qaflow_mail.outbound.render import Renderer
from qaflow_mail.outbound.stored_bodies import whole_message

CHUNK = 10_000  # rows per bulk insert: keeps the generator's own memory small
WORDS = ("mail", "forum", "answer", "question", "thread", "reply", "digest", "category", "detail", "example")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def followed(user: int, categories: int) -> list[int]:
    """One to three distinct category indexes for this user (two on average)."""
    count = 1 + user % 3
    return sorted({(user * 7 + step * 17) % categories for step in range(count)})


async def populate(url: str, args: argparse.Namespace, start: datetime, end: datetime) -> int:
    """Users, categories, subscriptions and a day of posts; returns the number of subscriptions."""
    rng = random.Random(12)
    engine = create_engine(url)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await session.execute(insert(Category), [
            {"slug": f"cat{c}", "name": f"Category {c}", "allow_strangers": False, "created_at": start}
            for c in range(args.categories)])
        category_ids = list((await session.scalars(select(Category.id).order_by(Category.id))).all())
    subscriptions = 0
    for first in range(0, args.users, CHUNK):
        block = range(first, min(args.users, first + CHUNK))
        async with sessions() as session, session.begin():
            await session.execute(insert(User), [
                {"email": f"reader{n}@list{n % 97}.example.org", "display_name": f"Reader {n}",
                 "created_at": start - timedelta(days=30)} for n in block])
            ids = (await session.execute(
                select(User.id, User.email).where(User.email.in_([f"reader{n}@list{n % 97}.example.org"
                                                                  for n in block])))).all()
            by_email = {email: uid for uid, email in ids}
            rows = [
                {"user_id": by_email[f"reader{n}@list{n % 97}.example.org"], "category_id": category_ids[c],
                 "mode": SubscriptionMode.DAILY.value, "last_digest_at": start, "created_at": start}
                for n in block for c in followed(n, args.categories)]
            await session.execute(insert(CategorySubscription), rows)
            subscriptions += len(rows)
    async with sessions() as session, session.begin():
        authors = list((await session.scalars(select(User.id).order_by(User.id).limit(500))).all())
        span = (end - start).total_seconds()
        topics: list[dict[str, Any]] = []
        for t in range(args.topics):
            at = start + timedelta(seconds=span * (t + 0.5) / (args.topics + 1))
            topics.append({"category_id": category_ids[t % args.categories], "author_id": rng.choice(authors),
                           "subject": f"Question {t} about {rng.choice(WORDS)} and {rng.choice(WORDS)}",
                           "created_at": at, "last_post_at": at})
        await session.execute(insert(Topic), topics)
        topic_ids = list((await session.scalars(select(Topic.id).order_by(Topic.id))).all())
        opened: dict[int, int] = {}
        posts: list[dict[str, Any]] = []
        for p in range(args.posts):
            post_id = p + 1
            index = p % args.topics  # the first --topics posts open the topics, the rest reply
            topic_at: datetime = topics[index]["created_at"]
            at = topic_at + (end - topic_at) * (p // args.topics) / (args.posts // args.topics + 1)
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 250)))
            body = "\n".join(words[i : i + 72] for i in range(0, len(words), 72))
            posts.append({"id": post_id, "topic_id": topic_ids[index], "author_id": rng.choice(authors),
                          "parent_id": opened.get(index), "message_id": f"p{p}@bench.example",
                          "subject": topics[index]["subject"], "body_text": body, "source": "smtp",
                          "created_at": at + timedelta(seconds=1)})
            opened.setdefault(index, post_id)
        await session.execute(insert(Post), posts)
    await engine.dispose()
    return subscriptions


async def main(args: argparse.Namespace) -> None:
    url = args.url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix='qaflow-bench-')) / 'digests.db'}"
    await prepare_schema(url)
    settings = Settings(
        site=SiteSettings(name="QAFlow Bench", domain="forum.example", base_url="https://forum.example"),
        tokens=TokensSettings(secret="bench-secret"),
    )
    schedule = DigestSchedule.from_settings(settings.digest)
    now = datetime.now(UTC)
    end = window_end(now, Period.DAILY, schedule, schedule.timezone_for(None))
    start = end - timedelta(days=1)
    started = time.perf_counter()
    subscriptions = await populate(url, args, start, end)
    print(f"database: {url.split(':')[0]}; {args.users} daily users, {subscriptions} subscriptions over "
          f"{args.categories} categories; {args.topics} topics, {args.posts} posts "
          f"(written in {time.perf_counter() - started:.1f} s)")

    engine = create_engine(url)
    sessions = session_factory(engine)
    rss_before = current_rss_mb()
    started = time.perf_counter()
    stats = await run_digests(sessions, settings=settings, renderer=Renderer(), now=now, period="daily",
                              batch_size=args.batch_size)
    elapsed = time.perf_counter() - started
    async with sessions() as session:
        rows = await session.scalar(select(func.count()).select_from(Outbox))
        row_bytes = await session.scalar(select(func.coalesce(func.sum(func.length(Outbox.raw)), 0)))
        bodies, body_bytes = (await session.execute(
            select(func.count(OutboxBody.id), func.coalesce(func.sum(func.length(OutboxBody.data)), 0)))).one()
        sample = (await session.execute(select(Outbox.body_id, Outbox.raw).limit(1))).one_or_none()
        whole = len(await whole_message(session, *sample)) if sample is not None else 0
    await engine.dispose()
    print(f"{'daily digest pass (' + str(stats.digests) + ' digests, ' + str(stats.batches) + ' batches)':<58} "
          f"{elapsed:8.2f} s  ({stats.digests / elapsed:.0f} digests/s)")
    print(f"  outbox rows: {rows} ({int(row_bytes) / 1e6:.1f} MB) and {bodies} shared bodies"
          f" ({int(body_bytes) / 1e6:.1f} MB) written; a digest as sent: {whole} bytes")
    print(f"  RSS before the pass: {rss_before:.0f} MB; peak RSS of the process: {rss_mb():.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--categories", type=int, default=50)
    parser.add_argument("--topics", type=int, default=500)
    parser.add_argument("--posts", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=100, help="users per batch (run_digests batch_size)")
    parser.add_argument("--url", help="database URL (default: a new SQLite file in a temporary directory)")
    arguments = parser.parse_args()
    if arguments.posts < arguments.topics:
        sys.exit("--posts must be at least --topics")
    asyncio.run(main(arguments))
