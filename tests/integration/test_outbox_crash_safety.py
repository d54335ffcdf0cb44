"""After a crash the outbox sends again only what was on the wire: each row is marked sent as its 250 comes back
(not when its whole batch is done), or written to the sent journal, which the next drain settles before it claims
anything; and the Maildir transport is exactly once (the row id names the file)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.mailer import DELIVERY_KEY, MaildirMailer
from qaflow_mail.outbound.outbox import DrainStats, claim, drain_once
from qaflow_mail.outbound.sent_journal import SentJournal
from tests.integration.test_outbox_delivery import ALICE, BOB, CAROL, Clock, enqueue_rows, outbound, rows

POLL_DEADLINE = 10.0


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database.url)
    yield engine
    await engine.dispose()


class FirstThenHang:
    """Delivers the first message to a Maildir, then never answers again (a relay that hangs, or a crash)."""

    def __init__(self, directory: str) -> None:
        self.maildir = MaildirMailer(directory)
        self.calls = 0

    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
        self.calls += 1
        if self.calls > 1:
            await asyncio.Event().wait()
        await self.maildir.send(envelope_from, recipient, raw)

    async def close(self) -> None:
        return None


async def test_a_row_is_marked_sent_as_its_250_comes_back(settings: Settings, engine: AsyncEngine) -> None:
    deps = Deps.build(outbound(settings, concurrency=1), session_factory(engine), clock=Clock())
    await enqueue_rows(deps, [(ALICE, None), (BOB, None), (CAROL, None)])
    mailer = FirstThenHang(settings.outbound.outbox_dir)
    drain = asyncio.create_task(drain_once(deps, mailer, worker="w1"))
    try:
        deadline = asyncio.get_running_loop().time() + POLL_DEADLINE
        while [r.status for r in await rows(deps)] != ["sent", "sending", "sending"]:
            assert asyncio.get_running_loop().time() < deadline, [r.status for r in await rows(deps)]
            await asyncio.sleep(0.02)
    finally:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain


async def test_the_maildir_transport_writes_a_row_once_however_often_it_is_sent(
    settings: Settings, engine: AsyncEngine
) -> None:
    clock = Clock()
    deps = Deps.build(settings, session_factory(engine), clock=clock)
    await enqueue_rows(deps, [(ALICE, None), (BOB, None), (CAROL, None)])
    async with deps.sessions() as session, session.begin():
        crashed = await claim(session, worker="crashed", now=clock.now, limit=10, lease_seconds=60)
    # The crashed worker had written every file, and a reader had already taken one of them, before it died.
    mailer = MaildirMailer(settings.outbound.outbox_dir)
    for row in crashed:
        DELIVERY_KEY.set(f"outbox-{row.id}")
        await mailer.send(row.envelope_from, row.recipient, row.raw)
    DELIVERY_KEY.set(None)
    outbox = Path(settings.outbound.outbox_dir)
    read = next((outbox / "new").iterdir())
    read.rename(outbox / "cur" / f"{read.name}:2,S")

    clock.advance(61)  # the claim runs out: another worker sends the rows again
    assert await drain_once(deps, mailer, worker="w2") == DrainStats(claimed=3, sent=3)
    assert len(list((outbox / "new").iterdir())) + len(list((outbox / "cur").iterdir())) == 3
    assert list((outbox / "tmp").iterdir()) == []


def test_the_journal_keeps_what_a_killed_owner_wrote_and_has_one_owner(tmp_path: Path) -> None:
    path = tmp_path / "data" / "outbox-sent.journal"
    first = SentJournal.open(path)
    assert first is not None and first.pending == []
    first.append(7)
    first.append(12)
    assert SentJournal.open(path) is None  # one owner at a time
    first.close()  # as a killed process's file is closed: what it wrote stays
    with path.open("ab") as torn:
        torn.write(b"13")  # a line the crash cut short: not a sure acceptance
    second = SentJournal.open(path)
    assert second is not None and second.pending == [7, 12]
    second.clear()
    assert second.pending == [] and path.read_bytes() == b""
    second.close()


async def test_a_drain_marks_what_the_journal_holds_sent_before_claiming(
    settings: Settings, engine: AsyncEngine, tmp_path: Path
) -> None:
    clock = Clock()
    deps = Deps.build(outbound(settings, concurrency=1), session_factory(engine), clock=clock)
    await enqueue_rows(deps, [(ALICE, None), (BOB, None)])
    async with deps.sessions() as session, session.begin():
        claimed = await claim(session, worker="killed", now=clock(), limit=10, lease_seconds=60.0)
    assert len(claimed) == 2
    clock.advance(61)  # the killed sender's claim has run out
    # The killed sender had Alice's 250 in its journal, not in the database; Bob's was still on the wire.
    journal = SentJournal.open(tmp_path / "outbox-sent.journal")
    assert journal is not None
    journal.append(claimed[0].id)
    mailer = FirstThenHang(settings.outbound.outbox_dir)
    stats = await drain_once(deps, mailer, worker="restarted", journal=journal)
    assert [r.status for r in await rows(deps)] == ["sent", "sent"]
    assert (stats.claimed, stats.sent, mailer.calls) == (1, 1, 1)  # only Bob's is sent again
    assert journal.pending == []
    journal.close()
