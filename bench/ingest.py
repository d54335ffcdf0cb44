"""Inbound throughput and latency of the gateway against a bare aiosmtpd that discards, measured in the same run.

    python bench/ingest.py [--messages 600] [--clients 4] [--url DATABASE_URL] [--heavy 0]
                           [--accept auto|inline|queue] [--queue-workers 0] [--offered MSG_PER_S]

A realistic mix (one in five a new topic, the rest replies by In-Reply-To; bodies of 2-20 KB) is sent by
--clients SMTP clients over loopback, first to a bare aiosmtpd (the reference), then to the gateway on a fresh
SQLite file (or --url, e.g. postgresql+asyncpg://postgres@127.0.0.1/bench, whose tables are truncated).
Prints messages/s, the ratio to the reference, p50/p99 of end-of-DATA → reply, and the gateway's RSS.
With --heavy N, N senders keep sending a worst-case HTML mail (1 MB of nested tags) during the gateway run:
the small messages' latency shows whether hostile input starves the others.
--accept and --queue-workers default to the service's own defaults ("auto", 0: a message that finds the pipeline
free goes through it before its reply, one that would wait is fsynced to the inbound queue and answered at once).
With --accept queue every message is queued and --queue-workers processes (0: a task of the gateway) run the
pipeline. Unless inline, the figures are the listener's, and the time until every message is stored as a post (the
queue drained) is printed beside them. With --offered R the clients send R messages a second in all,
each on its schedule, instead of as fast as replies come (latency at a given load rather than at saturation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import text

from qaflow_mail.config import (
    DatabaseSettings,
    HttpSettings,
    LimitsSettings,
    LoggingSettings,
    Settings,
    SiteSettings,
    SmtpSettings,
    TokensSettings,
)
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.migrate import upgrade
from qaflow_mail.db.models import Base
from qaflow_mail.pipeline.cpu import close_shared_pool
from qaflow_mail.server.app import running

DOMAIN = "bench.test"
CATEGORY = f"general@{DOMAIN}"
SENDERS = [f"user{i}@example.org" for i in range(200)]


class Discard:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


def mixed_messages(count: int, seed: int = 7) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    topics: list[str] = []
    out = []
    for index in range(count):
        sender = rng.choice(SENDERS)
        mid = f"m{index}.{seed}@example.org"
        size = rng.randint(2_000, 20_000)
        vocabulary = ("mail", "forum", "answer", "question", "thread", "reply")
        words = " ".join(rng.choice(vocabulary) for _ in range(size // 7))
        body = "\r\n".join(words[i : i + 72] for i in range(0, len(words), 72))
        headers = f"From: {sender}\r\nTo: {CATEGORY}\r\nSubject: Bench {index // 5}\r\nMessage-ID: <{mid}>\r\n"
        if topics and index % 5:
            headers += f"In-Reply-To: <{rng.choice(topics)}>\r\n"
        else:
            topics.append(mid)
        headers += "Date: Mon, 07 Dec 2026 09:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n"
        out.append((sender, (headers + "\r\n" + body + "\r\n").encode()))
    return out


def heavy_message(index: int) -> bytes:
    body = ("<div>" * 150 + "\r\n") * 1_300
    return (f"From: {SENDERS[0]}\r\nTo: {CATEGORY}\r\nSubject: heavy\r\nMessage-ID: <heavy{index}@example.org>\r\n"
            f"Content-Type: text/html\r\n\r\n{body}\r\n").encode()


async def blast(
    port: int, messages: list[tuple[str, bytes]], clients: int, offered: float = 0.0,
) -> tuple[float, list[float], int]:
    """Send everything over `clients` reused connections (at `offered` messages/s in all, when given); (seconds,
    latencies of DATA in ms, non-250 count)."""
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in messages:
        queue.put_nowait(item)
    latencies: list[float] = []
    refused = 0
    sent = 0

    async def client() -> None:
        nonlocal refused, sent
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=120)
        await smtp.connect()
        while not queue.empty():
            sender, raw = queue.get_nowait()
            if offered:
                due = begun + sent / offered
                sent += 1
                if due > time.perf_counter():
                    await asyncio.sleep(due - time.perf_counter())
            await smtp.mail(sender)
            await smtp.rcpt(CATEGORY)
            started = time.perf_counter()
            try:
                await smtp.data(raw)
            except aiosmtplib.SMTPResponseException as exc:
                if not refused:
                    print(f"first refusal: {exc.code} {exc.message}", file=sys.stderr)
                refused += 1
            latencies.append((time.perf_counter() - started) * 1000)
        await smtp.quit()

    begun = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - begun, latencies, refused


def _blast_in_process(port: int, messages: list[tuple[str, bytes]], clients: int, offered: float,
                      results: Any) -> None:
    results.put(asyncio.run(blast(port, messages, clients, offered)))


async def blast_from_another_process(
    port: int, messages: list[tuple[str, bytes]], clients: int, offered: float = 0.0,
) -> tuple[float, list[float], int]:
    """`blast` run by a process of its own, as real senders are: the server's event loop serves only the server."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    sender = context.Process(target=_blast_in_process, args=(port, messages, clients, offered, results))
    sender.start()
    try:
        outcome: tuple[float, list[float], int] = await asyncio.to_thread(results.get)
    finally:
        await asyncio.to_thread(sender.join)
    return outcome


async def wait_until_stored(url: str, count: int, within: float = 600.0) -> float:
    """Seconds until `count` inbound messages are recorded (the queue worked off)."""
    engine = create_engine(url)
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < within:
            async with engine.connect() as conn:
                if (await conn.scalar(text("SELECT count(*) FROM inbound_messages"))) >= count:
                    return time.perf_counter() - started
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    raise TimeoutError(f"{count} messages not stored within {within} s")


async def keep_sending_heavy(port: int, stop: asyncio.Event, index: int) -> int:
    sent = 0
    while not stop.is_set():
        with contextlib.suppress(aiosmtplib.SMTPException):
            await aiosmtplib.send(heavy_message(index * 10_000 + sent), sender=SENDERS[0], recipients=[CATEGORY],
                                  hostname="127.0.0.1", port=port, timeout=120)
        sent += 1
    return sent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def prepare(url: str, *, members_only_category: bool = False) -> None:
    """A migrated, empty database with the open category `general` (and, if asked, the closed `members`) and
    the senders registered."""
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    async with session_factory(engine)() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=True)
        if members_only_category:
            await queries.add_category(session, slug="members", name="Members", allow_strangers=False)
        now = datetime.now(UTC)
        for address in SENDERS:
            await queries.add_user(session, email=address, now=now)
    await engine.dispose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--url", default="")
    parser.add_argument("--heavy", type=int, default=0)
    parser.add_argument("--accept", choices=("auto", "inline", "queue"), default=SmtpSettings().accept)
    parser.add_argument("--queue-workers", type=int, default=SmtpSettings().queue_workers)
    parser.add_argument("--offered", type=float, default=0.0)
    args = parser.parse_args()
    messages = mixed_messages(args.messages)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Discard(), hostname="127.0.0.1", port=port)
    await asyncio.to_thread(controller.start)
    try:
        bare_seconds, bare_lat, _ = await blast_from_another_process(port, messages, args.clients, args.offered)
    finally:
        await asyncio.to_thread(controller.stop)
    bare_rate = len(messages) / bare_seconds

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        await prepare(url)
        settings = Settings(
            site=SiteSettings(name="Bench", domain=DOMAIN, base_url="http://bench.test", data_dir=tmp),
            database=DatabaseSettings(url=url),
            smtp=SmtpSettings(host="127.0.0.1", port=0, accept=args.accept, queue_workers=args.queue_workers),
            http=HttpSettings(enabled=False), tokens=TokensSettings(secret="bench-secret"),
            limits=LimitsSettings(sender_rate_per_hour=100_000), logging=LoggingSettings(level="WARNING"),
        )
        async with running(settings) as run:
            stop = asyncio.Event()
            heavy = [asyncio.create_task(keep_sending_heavy(run.smtp_port, stop, i)) for i in range(args.heavy)]
            seconds, lat, refused = await blast_from_another_process(run.smtp_port, messages, args.clients,
                                                                     args.offered)
            stop.set()
            heavy_sent = sum(await asyncio.gather(*heavy))
            drained = seconds + await wait_until_stored(url, len(messages) - refused + heavy_sent)
        close_shared_pool()
    rate = len(messages) / seconds
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend = "postgresql" if url.startswith("postgresql") else "sqlite"
    print(f"bare aiosmtpd: {bare_rate:,.0f} msg/s  p50 {statistics.median(bare_lat):.1f} ms")
    print(f"gateway ({backend}, {args.clients} clients): {rate:,.0f} msg/s = {rate / bare_rate:.3f} x bare; "
          f"DATA->reply p50 {statistics.median(lat):.1f} ms p99 {percentile(lat, 0.99):.1f} ms; "
          f"refused {refused}; peak RSS {rss_mb:.0f} MB" + (f"; heavy mails sent {heavy_sent}" if args.heavy else ""))
    if args.accept != "inline":
        print(f"queue ({args.queue_workers} worker processes): every message stored as a post "
              f"{drained:.1f} s after the first was sent = {len(messages) / drained:,.0f} msg/s through the pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
