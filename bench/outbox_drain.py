"""How fast the outbox drains to a real SMTP server (an aiosmtpd sink on loopback).

    python bench/outbox_drain.py [--messages 2000] [--concurrency 4] [--url DATABASE_URL]

Queues --messages rows of about 2.6 KB, then drains them with the SMTP mailer over reused connections and prints
messages per second. Without --url it uses a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qaflow_mail.config import DatabaseSettings, OutboundSettings, Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.migrate import upgrade
from qaflow_mail.db.models import OutboxKind
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.mailer import build_mailer
from qaflow_mail.outbound.outbox import OutgoingMessage, drain_once, enqueue
from qaflow_mail.outbound.sent_journal import SentJournal
from tests.sink import SmtpSink


async def run(url: str, messages: int, concurrency: int, *, journal: bool) -> None:
    async with SmtpSink() as sink:
        settings = Settings(
            database=DatabaseSettings(url=url),
            outbound=OutboundSettings(transport="smtp", smtp_port=sink.port, concurrency=concurrency, batch_size=100),
        )
        engine = create_engine(url)
        deps = Deps.build(settings, session_factory(engine))
        raw = b"Subject: bench\r\nMessage-ID: <bench@forum.test>\r\n\r\n" + b"hello world\r\n" * 200
        async with deps.sessions() as session, session.begin():
            await enqueue(session, [
                OutgoingMessage(kind=OutboxKind.NOTIFICATION, dedupe_key=f"bench:{i}",
                                message_id=f"bench-{i}@forum.test", envelope_from="bounces@forum.test",
                                recipient=f"user{i}@example.org", raw=raw)
                for i in range(messages)
            ], now=datetime.now(UTC))
        mailer = build_mailer(settings)
        # As serve's sender: each 250 is written to the journal, and the slot goes on while its mark commits.
        sent_journal = SentJournal.open(Path(tempfile.mkdtemp()) / "outbox-sent.journal") if journal else None
        started = time.perf_counter()
        sent = 0
        while (stats := await drain_once(deps, mailer, worker="bench", journal=sent_journal)).claimed:
            sent += stats.sent
        elapsed = time.perf_counter() - started
        if sent_journal is not None:
            sent_journal.close()
        await mailer.close()
        await engine.dispose()
        print(f"{url.split(':')[0]}: {sent} messages in {elapsed:.2f} s = {sent / elapsed:.0f} msg/s "
              f"over {sink.connections} connection(s){'' if journal else ', no sent journal'}; "
              f"sink received {len(sink.messages)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--url", help="database URL (tables are created if missing)")
    parser.add_argument("--no-journal", action="store_true", help="each slot waits for its mark's commit")
    args = parser.parse_args()
    url = args.url or f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
    upgrade(url)
    asyncio.run(run(url, args.messages, args.concurrency, journal=not args.no_journal))


if __name__ == "__main__":
    main()
