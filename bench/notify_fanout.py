"""How long the fan-out of one post to its "each" subscribers takes, and how long bulk imports take.

    python bench/notify_fanout.py [--recipients 10000] [--lines 100000] [--body-kb 2] [--url DATABASE_URL]
                                  [--end-to-end-only]

End to end (always run, last): a gateway (SMTP listener, fan-out worker, outbox sender over SMTP) with
--recipients "each" followers; one post by SMTP; the time from its 250 to the last notification accepted by an
SMTP sink (aiosmtpd, in its own process), against the sink's own accept rate measured first in the same run (the
same mailer, messages and concurrency, straight from memory), and the gateway process's peak RSS.

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
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qaflow_mail.config import (
    DatabaseSettings,
    LoggingSettings,
    OutboundSettings,
    Settings,
    SiteSettings,
    SmtpSettings,
    TokensSettings,
)
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.migrate import upgrade
from qaflow_mail.db.models import (
    Base,
    Category,
    CategorySubscription,
    FanoutJob,
    Outbox,
    Post,
    SubscriptionMode,
    User,
)
from qaflow_mail.outbound.mailer import build_mailer
from qaflow_mail.outbound.notify import enqueue_post_notifications
from qaflow_mail.outbound.render import Renderer
from qaflow_mail.server.app import running
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


# ----------------------------------------------------------------------------------------------------------------
# End to end: post's 250 -> last notification accepted by an SMTP sink


def _sink_process(expected: int, conn: Any) -> None:
    """A sink in its own process: sends its port, then the wall-clock time when `expected` messages arrived."""
    from tests.sink import SmtpSink

    async def serve() -> None:
        async with SmtpSink() as sink:
            conn.send(sink.port)
            await sink.wait_for(expected, timeout=3600)
            conn.send((time.time(), len(sink.messages)))
            conn.recv()  # stay up until told

    asyncio.run(serve())


class SinkProcess:
    def __init__(self, expected: int) -> None:
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.Process(target=_sink_process, args=(expected, child), daemon=True)
        self._process.start()
        self.port: int = self._conn.recv()

    async def done_at(self) -> tuple[float, int]:
        result: tuple[float, int] = await asyncio.to_thread(self._conn.recv)
        return result

    def close(self) -> None:
        self._conn.send("stop")
        self._process.join(10)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def sink_reference(recipients: int, raw: bytes, concurrency: int) -> float:
    """The sink's own accept rate: the same mailer sending the same message from memory, messages/s."""
    sink = SinkProcess(recipients)
    try:
        settings = Settings(outbound=OutboundSettings(transport="smtp", smtp_port=sink.port, concurrency=concurrency))
        mailer = build_mailer(settings)
        slots = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with slots:
                await mailer.send("bounces@forum.example", f"member{i}@example.org", raw)

        started = time.time()
        await asyncio.gather(*(one(i) for i in range(recipients)))
        finished, _ = await sink.done_at()
        await mailer.close()
        return recipients / (finished - started)
    finally:
        sink.close()


async def end_to_end(args: argparse.Namespace) -> None:
    recipients = args.recipients
    url = args.url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix='qaflow-bench-')) / 'e2e.db'}"
    await prepare_schema(url)
    now = datetime.now(UTC)
    sink = SinkProcess(recipients)
    try:
        settings = Settings(
            site=SiteSettings(name="QAFlow Bench", domain="forum.example", base_url="https://forum.example",
                              data_dir=tempfile.mkdtemp(prefix="qaflow-bench-var-")),
            database=DatabaseSettings(url=url),
            smtp=SmtpSettings(host="127.0.0.1", port=0, accept=args.accept),
            outbound=OutboundSettings(transport="smtp", smtp_port=sink.port, concurrency=args.concurrency,
                                      batch_size=args.batch_size, poll_interval=0.2),
            tokens=TokensSettings(secret="bench-secret"), logging=LoggingSettings(level="WARNING"),
        )
        from qaflow_mail.outbound.sender import sending
        from tests.smtp_client import make_mail, send

        rss_before = rss_mb()
        async with running(settings) as run, sending(run.deps):
            async with run.deps.sessions() as session, session.begin():
                fan = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
                await queries.add_user(session, email="author@example.org", display_name="Author", now=now)
                await session.execute(insert(User), [
                    {"email": f"member{i}@list{i % 97}.example.org", "display_name": f"Member {i}", "created_at": now}
                    for i in range(recipients)
                ])
                ids = (await session.scalars(select(User.id).where(User.email.like("member%")))).all()
                await session.execute(insert(CategorySubscription), [
                    {"user_id": uid, "category_id": fan.id, "mode": SubscriptionMode.EACH.value, "created_at": now}
                    for uid in ids
                ])
            await run.deps.categories.reload()
            body = ("Some words about the question, with a little detail. " * 20 + "\n\n") * max(1, args.body_kb)
            mail = make_mail(sender="author@example.org", to="general@forum.example", subject="A question", body=body)
            posted = time.time()
            conv = await send(run.smtp_port, mail, mail_from="author@example.org", rcpt_tos=["general@forum.example"])
            answered = time.time()
            busy_before = time.thread_time()
            assert conv.data_code == 250, conv.data
            finished, count = await sink.done_at()
            busy = time.thread_time() - busy_before
            async with run.deps.sessions() as session:
                size = await session.scalar(select(func.avg(func.length(Outbox.raw))))
                written = await session.scalar(select(func.max(FanoutJob.finished_at)))
        elapsed = finished - answered
        line = b"A line of a notification, as long as most lines of text in mail are.\r\n"
        raw = b"Subject: reference\r\nMessage-ID: <reference@forum.example>\r\n\r\n" + line * (
            int(size or 2500) // len(line))
    finally:
        sink.close()
    reference = await sink_reference(recipients, raw, args.concurrency)
    rate = count / elapsed
    print(f"end to end ({url.split(':')[0]}): post 250 in {(answered - posted) * 1000:.0f} ms; "
          f"{count} notifications accepted by the sink {elapsed:.2f} s after the 250 = {rate:.0f} msg/s")
    print(f"  the gateway's event loop thread busy {busy / elapsed:.0%} of that time ({busy / count * 1000:.2f} ms "
          "a notification)")
    if written is not None:
        print(f"  every outbox row written {written.timestamp() - answered:.2f} s after the 250")
    print(f"  sink's own accept rate (same mailer, from memory): {reference:.0f} msg/s; "
          f"ratio {rate / reference:.2f}")
    print(f"  peak RSS of the gateway process: {rss_mb():.0f} MB (before the gateway started: {rss_before:.0f} MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--body-kb", type=int, default=2, help="approximate post body size in KB")
    parser.add_argument("--url", help="database URL (default: a new SQLite file in a temporary directory)")
    parser.add_argument("--concurrency", type=int, default=OutboundSettings().concurrency,
                        help="SMTP connections to the sink (end to end; the service's default)")
    parser.add_argument("--batch-size", type=int, default=OutboundSettings().batch_size,
                        help="outbox rows claimed per round (the service's default)")
    parser.add_argument("--accept", choices=("auto", "inline", "queue"), default=SmtpSettings().accept,
                        help='[smtp] accept: "queue" runs the pipeline and the fan-out in a worker process')
    parser.add_argument("--end-to-end-only", action="store_true", help="skip the import and in-transaction parts")
    arguments = parser.parse_args()
    if arguments.recipients + 1 > arguments.lines:
        sys.exit("--lines must exceed --recipients")
    if not arguments.end_to_end_only:
        asyncio.run(main(arguments))
    asyncio.run(end_to_end(arguments))
