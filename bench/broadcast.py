"""How long an announcement broadcast and a digest run take.

    python bench/broadcast.py [--users 1000] [--digest-users 1000] [--url DATABASE_URL] [--concurrency 8]

Against a fresh SQLite file (or --url, e.g. postgresql+asyncpg://postgres@127.0.0.1/bench, whose tables are
dropped and recreated) it measures:
  1. publishing one announcement (as `announce send` does: one transaction writing its fan-out job), then the
     fan-out worker writing its broadcast to --users users into the outbox, batch by batch;
  2. draining that outbox over SMTP into an aiosmtpd sink on loopback until every recipient has it
     ([outbound] concurrency = --concurrency, batch_size = 500);
  3. one daily digest pass for --digest-users users following a category with 20 new topics and 40 replies.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from notify_fanout import prepare_schema
from sqlalchemy import insert, select

from qaflow_mail.commands.announce import send_announcement
from qaflow_mail.config import OutboundSettings, Settings, SiteSettings, TokensSettings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import CategorySubscription, Post, SubscriptionMode, Topic, User, UserStatus
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.digest_run import run_digests
from qaflow_mail.outbound.render import Renderer
from qaflow_mail.outbound.sender import sending
from qaflow_mail.server.fanout_worker import FanoutWorker


class CountingSink:
    """An aiosmtpd server that only counts distinct recipients, and says when it has seen `expected`."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.recipients: set[str] = set()
        self.done = asyncio.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.recipients.update(envelope.rcpt_tos)
        if len(self.recipients) >= self.expected:
            self.done.set()
        return "250 2.0.0 Queued"


def users(prefix: str, count: int, created: datetime) -> list[dict[str, Any]]:
    return [{"email": f"{prefix}{n}@list{n % 97}.example.org", "display_name": f"Member {n}", "is_admin": False,
             "status": UserStatus.ACTIVE.value, "bounce_score": 0.0, "announcements_muted": False,
             "created_at": created} for n in range(count)]


async def main(args: argparse.Namespace) -> None:
    url = args.url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix='qaflow-bench-')) / 'bench.db'}"
    await prepare_schema(url)
    loop = asyncio.get_running_loop()
    sink = CountingSink(args.users)
    server = await loop.create_server(lambda: SMTP(sink), host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(
        site=SiteSettings(name="QAFlow Bench", domain="forum.example", base_url="https://forum.example"),
        tokens=TokensSettings(secret="bench-secret"),
        outbound=OutboundSettings(transport="smtp", smtp_host="127.0.0.1", smtp_port=port, poll_interval=0.05,
                                  batch_size=500, concurrency=args.concurrency),
    )
    engine = create_engine(url)
    sessions = session_factory(engine)
    deps = Deps.build(settings, sessions)
    now = datetime.now(UTC)
    print(f"database: {engine.dialect.name}; {args.users} broadcast recipients; {args.digest_users} digest users")

    async with sessions() as session, session.begin():
        session.add(User(email="admin@forum.example", display_name="Admin", is_admin=True, created_at=now))
        if args.users > 1:
            await session.execute(insert(User), users("member", args.users - 1, now))

    started = time.perf_counter()
    async with sessions() as session, session.begin():
        result = await send_announcement(session, deps, sender="admin@forum.example", subject="Maintenance tonight",
                                         body="The forum moves to a new server tonight.\n\nBack by 23:00.\n" * 5,
                                         now=now)
    published = time.perf_counter() - started
    print(f"{'publish (writes the broadcast fan-out job)':<58} {published:8.2f} s")
    started = time.perf_counter()
    await FanoutWorker(deps, worker="bench").run_once()  # as the gateway's fan-out worker does, batch by batch
    enqueued = time.perf_counter() - started
    print(f"{'fan-out job into the outbox (' + str(result['recipients']) + ' rows)':<58} {enqueued:8.2f} s")

    started = time.perf_counter()
    async with sending(deps) as sender:
        sender.wake()
        await asyncio.wait_for(sink.done.wait(), timeout=600)
    delivered = time.perf_counter() - started
    print(f"{'deliver over SMTP to the sink (' + str(len(sink.recipients)) + ' recipients)':<58} {delivered:8.2f} s"
          f"  ({len(sink.recipients) / delivered:.0f} msg/s)")
    server.close()

    if args.digest_users:
        async with sessions() as session, session.begin():
            category = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
            admin_id = await session.scalar(select(User.id).where(User.email == "admin@forum.example"))
            assert admin_id is not None
            await session.execute(insert(User), users("reader", args.digest_users, now))
            readers = (await session.scalars(select(User.id).where(User.email.like("reader%")))).all()
            start = now - timedelta(days=1)
            await session.execute(insert(CategorySubscription), [
                {"user_id": uid, "category_id": category.id, "mode": SubscriptionMode.DAILY.value,
                 "last_digest_at": start, "created_at": start} for uid in readers])
            for t in range(20):
                at = start + timedelta(minutes=30 * t + 1)
                topic = Topic(category_id=category.id, author_id=admin_id, subject=f"Topic {t}", created_at=at,
                              last_post_at=at)
                session.add(topic)
                await session.flush()
                for r in range(3):
                    session.add(Post(topic_id=topic.id, author_id=admin_id, message_id=f"t{t}r{r}@bench",
                                     subject=topic.subject, body_text=f"Post {r} of topic {t}.\nSecond line.",
                                     created_at=at + timedelta(minutes=r)))
        started = time.perf_counter()
        stats = await run_digests(sessions, settings=settings, renderer=Renderer(), now=now, period="daily")
        elapsed = time.perf_counter() - started
        print(f"{'daily digest pass (' + str(stats.digests) + ' digests)':<58} {elapsed:8.2f} s"
              f"  ({stats.digests / elapsed:.0f} digests/s)")
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--digest-users", type=int, default=1000)
    parser.add_argument("--url")
    parser.add_argument("--concurrency", type=int, default=8)
    asyncio.run(main(parser.parse_args()))
