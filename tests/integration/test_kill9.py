"""`kill -9` of a real `qaflow-mail serve` process, mid-stream, then a restart: a 250 means stored, once.

- Ingest: several SMTP clients blast messages and retry what got no answer (as an MTA does); the server is killed
  twice while they do. Every message that got a 250 is stored exactly once, and nothing is stored twice: with the
  pipeline before the reply, with [smtp] accept = "queue" (the worker process killed with serve), and with the
  default "auto" (some messages answered after the pipeline, the others after the queue's fsync).
- Fan-out: killed while posts to 1,000 followers are being expanded; after the restart each follower has exactly
  one outbox row per post.
- Outbox to an SMTP relay: killed while it drains; after the restart everything is delivered, and only messages
  that were on the wire at the kill (at most [outbound] concurrency) arrive twice: those the relay had accepted
  are in the sent journal even when their marks were not committed yet.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    FanoutJob,
    Outbox,
    OutboxKind,
    OutboxStatus,
    Post,
)
from tests.fanout import add_followers
from tests.polling import until
from tests.serve_process import ServeProcess
from tests.sink import SmtpSink
from tests.smtp_client import make_mail

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
SENDERS = [f"sender{i}@example.org" for i in range(8)]
AUTHOR = "author@example.org"
FOLLOWERS = 1_000
SHORT_LEASES = {"lease_seconds": 3.0, "fanout_lease_seconds": 2.0, "poll_interval": 0.1}


async def seed(sessions: async_sessionmaker[AsyncSession], *, followers: int = 0) -> None:
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        for address in [*SENDERS, AUTHOR]:
            await queries.add_user(session, email=address, now=now)
        if followers:
            await add_followers(session, category_id=general.id, count=followers, now=now)


async def deliver_until_250(server: ServeProcess, raw: bytes, sender: str, *, within: float = 40.0) -> None:
    """Send as an MTA would: again after a dropped connection, a refused connection or a 4xx, until a 250."""
    deadline = time.monotonic() + within
    while True:
        try:
            await aiosmtplib.send(raw, sender=sender, recipients=[GENERAL], hostname="127.0.0.1", port=server.port,
                                  timeout=20)
            return
        except aiosmtplib.SMTPResponseException as exc:
            assert 400 <= exc.code < 500, f"a permanent refusal: {exc.code} {exc.message}"
        except (aiosmtplib.SMTPException, OSError):
            pass  # the server is down or went away mid-conversation
        if time.monotonic() > deadline:
            raise AssertionError("no 250 within the deadline")
        await asyncio.sleep(0.05)  # an MTA's retry delay, shortened


@pytest.mark.parametrize("smtp", [{"accept": "inline"}, {"accept": "queue", "queue_workers": 1}, {"accept": "auto"}],
                         ids=["inline", "queue", "auto"])
async def test_every_250_is_stored_exactly_once_across_two_kills(
    tmp_path: Path, database_url: str, sessions: async_sessionmaker[AsyncSession], smtp: dict[str, object]
) -> None:
    await seed(sessions)
    # "queue": the 250 follows the fsync of the queue file, and the worker process stores the post after it.
    server = ServeProcess(tmp_path, database_url=database_url, domain=DOMAIN, extra={"smtp": smtp})
    await asyncio.to_thread(server.start)
    total, clients = 160, 6
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)
    answered: list[str] = []

    async def client(number: int) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            message_id = f"blast{index}@client.test"
            mail = make_mail(sender=SENDERS[number], to=GENERAL, subject=f"Question {index}",
                             body=f"Body of question {index}.\n" * 20, message_id=f"<{message_id}>")
            await deliver_until_250(server, mail.as_bytes(), SENDERS[number])
            answered.append(message_id)

    async def killer() -> None:
        for after in (total // 4, total // 2):

            async def enough(count: int = after) -> bool:
                return len(answered) >= count

            await until(enough, timeout=40, what=f"{after} answers")
            server.kill()
            await asyncio.to_thread(server.start)

    async def stored_posts() -> Counter[str]:
        async with sessions() as session:
            return Counter((await session.scalars(select(Post.message_id))).all())

    async def all_answered_stored() -> bool:
        return set(answered) <= set(await stored_posts())

    try:
        await asyncio.gather(killer(), *(client(n) for n in range(clients)))
        await until(all_answered_stored, timeout=60, what="every answered message stored")
    finally:
        await asyncio.to_thread(server.stop)
    stored = await stored_posts()
    assert sorted(answered) == sorted(f"blast{i}@client.test" for i in range(total))
    assert [mid for mid, count in stored.items() if count > 1] == []
    assert set(answered) <= set(stored)


async def test_a_fanout_killed_midway_gives_each_follower_exactly_one_row_per_post(
    tmp_path: Path, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await seed(sessions, followers=FOLLOWERS)
    server = ServeProcess(tmp_path, database_url=database_url, domain=DOMAIN, extra={"outbound": SHORT_LEASES})
    await asyncio.to_thread(server.start)
    posts = 3
    try:
        for index in range(posts):
            mail = make_mail(sender=AUTHOR, to=GENERAL, subject=f"Hello all {index}", body="For everyone.",
                             message_id=f"<fan{index}@client.test>")
            await deliver_until_250(server, mail.as_bytes(), AUTHOR)

        async def expansion_started() -> bool:
            return 0 < await _notification_rows(sessions) < posts * FOLLOWERS

        await until(expansion_started, timeout=30, what="the fan-out under way")
        server.kill()
        killed_at = await _notification_rows(sessions)
        await asyncio.to_thread(server.start)

        async def finished() -> bool:
            async with sessions() as session:
                return (await session.scalar(
                    select(func.count(FanoutJob.id)).where(FanoutJob.finished_at.is_(None)))) == 0

        await until(finished, timeout=30, what="every fan-out job finished after the restart")
    finally:
        await asyncio.to_thread(server.stop)
    async with sessions() as session:
        rows = (await session.execute(
            select(Outbox.post_id, Outbox.user_id).where(Outbox.kind == OutboxKind.NOTIFICATION.value)
        )).all()
    per_recipient = Counter(rows)
    assert 0 < killed_at < posts * FOLLOWERS  # the kill did land mid-way
    assert len(per_recipient) == posts * FOLLOWERS
    assert max(per_recipient.values()) == 1


async def _notification_rows(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count(Outbox.id)).where(Outbox.kind == OutboxKind.NOTIFICATION.value))
    return int(count or 0)


async def test_the_outbox_killed_while_draining_sends_again_only_what_was_on_the_wire(
    tmp_path: Path, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    followers, concurrency = 200, 4
    await seed(sessions, followers=followers)
    async with SmtpSink() as sink:
        outbound = {**SHORT_LEASES, "transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port,
                    "concurrency": concurrency, "batch_size": 50}
        server = ServeProcess(tmp_path, database_url=database_url, domain=DOMAIN, extra={"outbound": outbound})
        await asyncio.to_thread(server.start)
        try:
            mail = make_mail(sender=AUTHOR, to=GENERAL, subject="Hello relay", body="For everyone.",
                             message_id="<relay@client.test>")
            await deliver_until_250(server, mail.as_bytes(), AUTHOR)
            await until(lambda: _more_than(sink, followers // 4), timeout=30, what="delivery under way")
            server.kill()
            await sink.hung_up()  # a message whose end of DATA was already sent is recorded by now
            at_kill = len(sink.messages)
            sent_at_kill = await _sent_rows(sessions)
            await asyncio.to_thread(server.start)
            await until(lambda: _all_sent(sessions, followers), timeout=40, what="every notification sent")
        finally:
            await asyncio.to_thread(server.stop)
        per_recipient = Counter(recipient for message in sink.messages for recipient in message.rcpt_tos
                                if recipient.startswith("follower"))
    assert at_kill < followers  # the kill did land mid-way
    assert len(per_recipient) == followers  # nobody missed
    twice = [recipient for recipient, count in per_recipient.items() if count > 1]
    # Only messages on the wire when the process died, never more than [outbound] concurrency: the ones the relay
    # had accepted were in the sent journal (their marks perhaps not yet committed: at_kill - sent_at_kill may be
    # larger), and the restarted sender marked them sent before it claimed anything.
    assert len(twice) <= concurrency, (twice, at_kill, sent_at_kill)


async def _more_than(sink: SmtpSink, count: int) -> bool:
    return len(sink.messages) > count


async def _sent_rows(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        count = await session.scalar(select(func.count(Outbox.id)).where(
            Outbox.kind == OutboxKind.NOTIFICATION.value, Outbox.status == OutboxStatus.SENT.value))
    return int(count or 0)


async def _all_sent(sessions: async_sessionmaker[AsyncSession], expected: int) -> bool:
    return await _sent_rows(sessions) >= expected
