"""Resident memory of `qaflow-mail serve` (a real child process), sampled from /proc every 20 ms.

    python bench/memory.py [--big 8] [--size-mb 25] [--messages 600] [--clients 4] [--url DATABASE_URL]
                           [--accept auto|inline|queue] [--queue-workers 0]

Three phases against one server on a fresh SQLite file (or --url, whose tables are truncated):
  1. idle: the server started, nothing sent, for 3 s;
  2. ingest: the realistic mix of bench/ingest.py (--messages, from --clients SMTP clients);
  3. big: --big messages of --size-mb MB each (a text part and a large base64 attachment) sent at once by as many
     SMTP clients, first from a known sender, then from an unknown sender to a members-only category (refused:
     only its headers and 64 KB of it may stay in the database).
Prints the peak RSS of the serving process and of it with its worker processes, per phase, with the replies.
Each phase lasts until the queue worker has taken every message queued (with the default "auto", those that came
while the pipeline was busy; with --accept queue, all). --accept and --queue-workers default to the service's own
defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import aiosmtplib
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import CATEGORY, DOMAIN, SENDERS, blast, mixed_messages, prepare

from qaflow_mail.config import SmtpSettings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Disposition, InboundMessage
from tests.serve_process import ServeProcess

MEMBERS_ONLY = f"members@{DOMAIN}"
STRANGER = "stranger@elsewhere.example"
MB = 1024 * 1024


class Sampler:
    """Peak RSS of the server (alone, and with its children) while a phase runs."""

    def __init__(self, server: ServeProcess) -> None:
        self.server = server
        self.peak_main = 0
        self.peak_all = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_main = max(self.peak_main, self.server.rss_bytes())
            self.peak_all = max(self.peak_all, self.server.rss_bytes(children=True))
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def line(self, label: str) -> str:
        return f"{label:<44} peak RSS {self.peak_main / MB:6.0f} MB (with workers {self.peak_all / MB:6.0f} MB)"


def big_message(index: int, size: int, sender: str, to: str) -> bytes:
    payload = os.urandom(size * 3 // 4 - 4096)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    head = (f"From: {sender}\r\nTo: {to}\r\nSubject: big {index}\r\nMessage-ID: <big{index}.{time.time_ns()}"
            f"@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nThe logs you asked for are attached.\r\n--b\r\n"
            "Content-Type: application/octet-stream; name=logs.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    return head.encode() + encoded + b"--b--\r\n"


async def send_all(port: int, messages: list[bytes], sender: str, to: str) -> tuple[Counter[str], float]:
    async def one(raw: bytes) -> str:
        try:
            await aiosmtplib.send(raw, sender=sender, recipients=[to], hostname="127.0.0.1", port=port, timeout=600)
        except aiosmtplib.SMTPResponseException as exc:
            return f"{exc.code} {exc.message[:60]}"
        return "250"

    started = time.perf_counter()
    replies = await asyncio.gather(*(one(raw) for raw in messages))
    return Counter(replies), time.perf_counter() - started


async def refused_raw_bytes(url: str) -> tuple[int, int]:
    """(refused messages recorded, bytes of raw mail they keep)."""
    engine = create_engine(url)
    async with session_factory(engine)() as session:
        row = (await session.execute(
            select(func.count(InboundMessage.id), func.coalesce(func.sum(func.length(InboundMessage.raw)), 0))
            .where(InboundMessage.disposition == Disposition.REJECTED.value)
        )).one()
    await engine.dispose()
    return int(row[0]), int(row[1])


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", type=int, default=8)
    parser.add_argument("--size-mb", type=float, default=25.0)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--url", default="")
    parser.add_argument("--accept", choices=("auto", "inline", "queue"), default=SmtpSettings().accept)
    parser.add_argument("--queue-workers", type=int, default=SmtpSettings().queue_workers)
    args = parser.parse_args()
    size = int(args.size_mb * 1_000_000)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite+aiosqlite:///{Path(tmp) / 'memory.db'}"
        await prepare(url, members_only_category=True)
        server = ServeProcess(Path(tmp), database_url=url, domain=DOMAIN,
                              extra={"smtp": {"max_message_size": size + MB, "accept": args.accept,
                                                       "queue_workers": args.queue_workers}})
        queue = Path(tmp) / "queue" / "new"

        async def drained() -> None:
            while True:
                if not (queue.is_dir() and any(queue.iterdir())):
                    return
                await asyncio.sleep(0.05)  # poll interval: the queue is another process's directory
        server.start()
        try:
            with Sampler(server) as idle:
                await asyncio.sleep(3)  # the idle phase is a span of time, not a wait for an event
            print(idle.line("idle"))

            with Sampler(server) as load:
                seconds, _latencies, refused = await blast(server.port, mixed_messages(args.messages),
                                                           args.clients)
                await drained()
            print(load.line(f"ingest: {args.messages} mixed messages, {args.clients} clients") +
                  f"  {args.messages / seconds:.0f} msg/s, refused {refused}")

            known = [big_message(i, size, SENDERS[i % len(SENDERS)], CATEGORY) for i in range(args.big)]
            with Sampler(server) as big:
                replies, seconds = await send_all(server.port, known, SENDERS[0], CATEGORY)
                await drained()
            del known
            print(big.line(f"big: {args.big} x {args.size_mb:g} MB, known sender") +
                  f"  {seconds:.1f} s, replies {dict(replies)}")

            strangers = [big_message(100 + i, size, STRANGER, MEMBERS_ONLY) for i in range(args.big)]
            before = await refused_raw_bytes(url)
            with Sampler(server) as refused_big:
                replies, seconds = await send_all(server.port, strangers, STRANGER, MEMBERS_ONLY)
                await drained()
            del strangers
            after = await refused_raw_bytes(url)
            print(refused_big.line(f"big: {args.big} x {args.size_mb:g} MB, unknown sender") +
                  f"  {seconds:.1f} s, replies {dict(replies)}")
            print(f"refused messages recorded: {after[0] - before[0]}, raw kept for them: "
                  f"{(after[1] - before[1]) / MB:.2f} MB")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
