"""[smtp] accept = "queue": the listener answers 250 once the message is fsynced to the inbound queue, and the queue
workers take it through the pipeline afterwards; a refusal is then told by mail, under the same rules as for mail
polled over IMAP (no notice to a sender who may be forged).

What a queued 250 promises is tested where it can fail: the message is in the queue directory while the pipeline
cannot take it, a crash between the 250 and the post (a file left behind, or left behind after its post was
stored) gives one post, a message that fails every time is shunted rather than tried forever, a file no one can
read is set aside, and worker processes die with a `kill -9`'d serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.config import LmtpSettings, Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Disposition, InboundMessage, Outbox, OutboxKind, Post
from qaflow_mail.server.app import Running, running
from qaflow_mail.server.inbound_queue import InboundQueue
from qaflow_mail.server.ops_routes import queue_text
from qaflow_mail.server.queue_worker import QueueWorker
from tests.clock import Clock
from tests.fresh_interpreter import MIGRATION_STACK, packages_loaded_by
from tests.polling import until
from tests.serve_process import ServeProcess, _children_of
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, STRANGER = "alice@example.org", "stranger@example.com"
AUTHSERV = "mx.forum.test"
AUTHENTICATED = {"Authentication-Results": f"{AUTHSERV}; dkim=pass header.d=example.com header.s=sel"}


def queued(settings: Settings, *, workers: int = 0) -> Settings:
    return dataclasses.replace(
        settings,
        smtp=dataclasses.replace(settings.smtp, accept="queue", queue_workers=workers),
        announce=dataclasses.replace(settings.announce, trusted_authserv_id=AUTHSERV),
        limits=dataclasses.replace(settings.limits, shunt_after_failures=2),
    )


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return queued(settings)


async def seed(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_user(session, email=ALICE, display_name="Alice", now=datetime.now(UTC))


@pytest.fixture
async def forum(gateway: Running) -> Running:
    await seed(gateway.deps.sessions)
    return gateway


def question(n: int, *, sender: str = ALICE, headers: dict[str, str] | None = None) -> bytes:
    return make_mail(sender=sender, to=GENERAL, subject=f"Question {n}", body=f"What about {n}?\n",
                     message_id=f"<q{n}@client.example>", headers=headers).as_bytes()


async def count(run: Running, statement: object) -> int:
    async with run.deps.sessions() as session:
        return int(await session.scalar(statement) or 0)  # type: ignore[call-overload]


def posts_with(message_id: str) -> object:
    return select(func.count()).select_from(Post).where(Post.message_id == message_id)


def waiting(run: Running) -> list[str]:
    return InboundQueue(run.deps.settings.smtp.queue_dir).waiting()


def drained(run: Running) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return waiting(run) == []

    return check


async def test_a_250_waits_for_the_queue_file_and_the_worker_posts_it(
    forum: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qaflow_mail.server import queue_worker

    real_ingest = queue_worker.ingest
    down = True

    async def database_down(*args: object, **kwargs: object) -> object:
        if down:
            raise OperationalError("SELECT 1", {}, Exception("database is down"))
        return await real_ingest(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(queue_worker, "ingest", database_down)
    conv = await send(forum.smtp_port, question(1), mail_from=ALICE, rcpt_tos=[GENERAL])
    assert conv.data == (250, "2.0.0 Message accepted for delivery")
    # The pipeline cannot take it, yet it is safe: in the queue, exactly as sent.
    (name,) = waiting(forum)
    stored = InboundQueue(forum.deps.settings.smtp.queue_dir).read(name)
    assert stored is not None
    assert stored.raw == question(1).replace(b"\n", b"\r\n")
    assert (stored.mail_from, stored.rcpt_tos, stored.source) == (ALICE, (GENERAL,), "smtp")
    assert "qaflow_mail_inbound_queue_messages 1\n" in queue_text(InboundQueue(forum.deps.settings.smtp.queue_dir))
    assert await count(forum, posts_with("q1@client.example")) == 0
    down = False  # the database is back: the next try (after a second) posts it

    async def posted() -> bool:
        return await count(forum, posts_with("q1@client.example")) == 1

    await until(posted, what="the post")
    await until(drained(forum), what="the queue file removed")
    assert "qaflow_mail_inbound_queue_messages 0\n" in queue_text(InboundQueue(forum.deps.settings.smtp.queue_dir))


async def test_a_refused_queued_message_is_told_by_mail_to_an_authenticated_sender(forum: Running) -> None:
    conv = await send(forum.smtp_port, question(2, sender=STRANGER, headers=AUTHENTICATED), mail_from=STRANGER,
                      rcpt_tos=[GENERAL])
    assert conv.data_code == 250
    notices = select(func.count()).select_from(Outbox).where(Outbox.kind == OutboxKind.NOTICE,
                                                             Outbox.recipient == STRANGER)

    async def told() -> bool:
        return await count(forum, notices) == 1

    await until(told, what="the rejection notice")
    async with forum.deps.sessions() as session:
        row = await session.scalar(select(Outbox).where(Outbox.kind == OutboxKind.NOTICE))
    assert row is not None and f"Only members may post to {GENERAL}".encode() in row.raw.replace(b"=\r\n", b"")
    assert await count(forum, posts_with("q2@client.example")) == 0


async def test_a_refused_sender_who_may_be_forged_gets_no_notice(forum: Running) -> None:
    conv = await send(forum.smtp_port, question(3, sender=STRANGER), mail_from=STRANGER, rcpt_tos=[GENERAL])
    assert conv.data_code == 250
    rejected = select(func.count()).select_from(InboundMessage).where(
        InboundMessage.message_id == "q3@client.example", InboundMessage.disposition == Disposition.REJECTED)

    async def recorded() -> bool:
        return await count(forum, rejected) == 1

    await until(recorded, what="the refusal recorded")
    assert await count(forum, select(func.count()).select_from(Outbox).where(Outbox.kind == OutboxKind.NOTICE)) == 0


async def test_files_left_by_a_crash_give_one_post_each(settings: Settings, clock: Clock) -> None:
    queue = InboundQueue(settings.smtp.queue_dir)
    queue.prepare()
    # Crashed after the 250: the file is there, nothing stored. Crashed after the commit: both, as twice below.
    for raw in (question(4), question(5), question(5)):
        queue.put(raw, mail_from=ALICE, rcpt_tos=[GENERAL], source="smtp")
    engine = create_engine(settings.database.url)
    try:
        await seed(session_factory(engine))  # before the worker starts taking the files
    finally:
        await engine.dispose()
    async with running(settings, clock=clock) as run:
        await until(drained(run), what="the queue worked off")
        assert await count(run, posts_with("q4@client.example")) == 1
        assert await count(run, posts_with("q5@client.example")) == 1


async def test_a_message_that_fails_every_time_is_shunted_not_retried_forever(
    forum: Running, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def unreadable(*args: object, **kwargs: object) -> object:
        raise ValueError("no reader for this body")

    monkeypatch.setattr("qaflow_mail.pipeline.body.extract_content", unreadable)
    # A worker of its own with short pauses (the gateway's pauses a second first), on a queue of its own: the
    # gateway's worker, taking the same file beside it, made two shunt records in one run.
    queue = InboundQueue(tmp_path / "own-queue")
    await asyncio.to_thread(queue.prepare)
    await asyncio.to_thread(queue.put, question(6), mail_from=ALICE, rcpt_tos=[GENERAL], source="smtp")
    worker = QueueWorker(forum.deps, queue, retry_base=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))

    async def shunted_away() -> bool:
        return await asyncio.to_thread(queue.waiting) == []

    try:
        await until(shunted_away, what="the message shunted")
    finally:
        stop.set()
        await task
    shunted = select(func.count()).select_from(InboundMessage).where(
        InboundMessage.message_id == "q6@client.example", InboundMessage.disposition == Disposition.SHUNTED)
    assert await count(forum, shunted) == 1
    assert await count(forum, posts_with("q6@client.example")) == 0


async def test_an_unreadable_queue_file_is_set_aside(forum: Running) -> None:
    queue = InboundQueue(forum.deps.settings.smtp.queue_dir)
    (queue.new / "00000000000000000001.1.00000001").write_bytes(b"not an envelope\nFrom: x\r\n\r\nbody")

    async def set_aside() -> bool:
        return waiting(forum) == [] and len(os.listdir(queue.bad)) == 1

    await until(set_aside, what="the file moved to bad/")


def test_put_writes_the_file_whole_and_private(tmp_path: Path) -> None:
    queue = InboundQueue(tmp_path / "queue")
    queue.prepare()
    stale = queue.tmp / "half-written"
    stale.write_bytes(b"{")
    os.utime(stale, (0, 0))
    queue.prepare()  # what a process killed mid-write left is never answered: removed
    assert not stale.exists()
    first = queue.put(b"Subject: a\r\n\r\nA\r\n", mail_from="", rcpt_tos=["x@forum.test"], source="lmtp")
    second = queue.put(b"Subject: b\r\n\r\nB\r\n", mail_from="b@example.org", rcpt_tos=[], source="smtp")
    assert queue.waiting() == [first, second]
    assert os.listdir(queue.tmp) == []
    assert (queue.new / first).stat().st_mode & 0o077 == 0
    message = queue.read(first)
    assert message is not None
    assert (message.raw, message.mail_from, message.rcpt_tos, message.source) == (
        b"Subject: a\r\n\r\nA\r\n", "", ("x@forum.test",), "lmtp")
    queue.remove(first)
    assert queue.read(first) is None and queue.waiting() == [second]


def test_put_copies_a_spooled_message_from_its_file(tmp_path: Path) -> None:
    queue = InboundQueue(tmp_path / "queue")
    queue.prepare()
    raw = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 200_000  # 3.2 MB: over a chunk, not a multiple
    with tempfile.SpooledTemporaryFile(max_size=1024) as spool:
        spool.write(raw)  # left at its end, as the DATA reader leaves it
        name = queue.put(spool, mail_from="a@example.org", rcpt_tos=[GENERAL], source="smtp")
    message = queue.read(name)
    assert message is not None and message.raw == raw


def test_a_worker_process_loads_no_schema_migration_code() -> None:
    """Alembic, with the Mako and Pygments it brings, is 11 MB of a worker process's memory it never uses."""
    assert MIGRATION_STACK.isdisjoint(packages_loaded_by("import qaflow_mail.server.queue_worker"))


async def test_worker_processes_post_and_die_with_a_killed_serve(
    tmp_path: Path, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await seed(sessions)
    server = ServeProcess(tmp_path, database_url=database_url, domain=DOMAIN,
                          extra={"smtp": {"accept": "queue", "queue_workers": 1}})
    await asyncio.to_thread(server.start)
    try:
        conv = await send(server.port, question(7), mail_from=ALICE, rcpt_tos=[GENERAL])
        assert conv.data_code == 250

        async def posted() -> bool:
            async with sessions() as session:
                return bool(await session.scalar(posts_with("q7@client.example")))

        await until(posted, timeout=60, what="the post from the worker process")
        workers = _children_of(server.pid)
        assert workers, "no worker process"
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)  # the serve process alone
        server.process.wait(timeout=10)

        async def workers_gone() -> bool:
            return not any(_alive(pid) for pid in workers)

        await until(workers_gone, timeout=10, what="the worker processes gone with serve")
    finally:
        await asyncio.to_thread(server.stop)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


async def test_lmtp_queues_too_with_one_reply_per_accepted_recipient(settings: Settings, clock: Clock) -> None:
    from tests.integration.test_lmtp import lmtp_conversation

    settings = dataclasses.replace(settings, lmtp=LmtpSettings(enabled=True, port=0))
    async with running(settings, clock=clock) as run:
        await seed(run.deps.sessions)
        assert run.lmtp_port
        rcpt_replies, data_replies = await lmtp_conversation(
            run.lmtp_port, ALICE, [GENERAL, f"nosuch@{DOMAIN}"], question(8))
        assert [r[:3] for r in rcpt_replies] == ["250", "550"]
        assert data_replies == ["250 2.0.0 Message accepted for delivery"]

        async def posted() -> bool:
            return await count(run, posts_with("q8@client.example")) == 1

        await until(posted, what="the post")


async def test_a_full_disk_is_a_temporary_refusal_and_nothing_is_written(
    settings: Settings, clock: Clock, tmp_path: Path
) -> None:
    disk = os.statvfs(tmp_path)  # the queue directory's file system (data_dir is under tmp_path)
    more_than_free = disk.f_bavail * disk.f_frsize * 2
    settings = dataclasses.replace(settings, smtp=dataclasses.replace(settings.smtp, queue_min_free=more_than_free))
    async with running(settings, clock=clock) as run:
        await seed(run.deps.sessions)
        conv = await send(run.smtp_port, question(9), mail_from=ALICE, rcpt_tos=[GENERAL])
        assert conv.data == (452, "4.3.1 Insufficient system storage; try again later")
        assert waiting(run) == []
        assert await count(run, posts_with("q9@client.example")) == 0
