"""[smtp] accept = "auto", the default: a message that finds the pipeline free is answered with the pipeline's own
verdict (a refusal is the SMTP reply); one that would wait behind another message, running or queued, is written to
the inbound queue, fsynced and answered 250 at once, and the queue worker posts it afterwards.

The pipeline is kept busy the way it is in real life: another client holds the database's write lock.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import func, select

from qaflow_mail.config import Settings, SmtpSettings
from qaflow_mail.db.models import Post
from qaflow_mail.pipeline.cpu import LARGE_MESSAGE_BYTES
from qaflow_mail.server.accept_policy import answers_inline
from qaflow_mail.server.app import Running
from qaflow_mail.server.inbound_queue import InboundQueue
from tests.conftest import members_only_general
from tests.database_hold import database_held
from tests.polling import until
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, STRANGER = "alice@example.org", "stranger@example.com"
VERDICT = (250, "2.0.0 Message accepted")
QUEUED = (250, "2.0.0 Message accepted for delivery")
SMALL = 4096


def queue_empty() -> bool:
    return False


def queue_busy() -> bool:
    return True


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A statement waiting for a held lock gives up after a second, so the held message is answered 451 quickly.
    return dataclasses.replace(settings, database=dataclasses.replace(settings.database, statement_timeout=1.0))


@pytest.fixture
async def forum(gateway: Running) -> Running:
    return await members_only_general(gateway, member=ALICE, display_name="Alice")


def question(n: int, *, sender: str = ALICE) -> bytes:
    return make_mail(sender=sender, to=GENERAL, subject=f"Question {n}", body=f"What about {n}?\n",
                     message_id=f"<auto{n}@client.example>").as_bytes()


async def posts(run: Running) -> list[str]:
    async with run.deps.sessions() as session:
        return sorted((await session.scalars(select(Post.message_id))).all())


def queue_of(run: Running) -> InboundQueue:
    return InboundQueue(run.deps.settings.smtp.queue_dir)


def test_auto_is_the_default_and_queues_only_what_would_wait() -> None:
    assert SmtpSettings().accept == "auto"
    assert SmtpSettings().queue_workers == 1  # a worker process, while queued mail waits
    assert answers_inline("auto", inline_running=0, queue_waiting=queue_empty, size=SMALL)
    assert not answers_inline("auto", inline_running=1, queue_waiting=queue_empty, size=SMALL)
    assert not answers_inline("auto", inline_running=0, queue_waiting=queue_busy, size=SMALL)
    assert not answers_inline("auto", inline_running=0, queue_waiting=queue_empty, size=LARGE_MESSAGE_BYTES)
    assert answers_inline("inline", inline_running=5, queue_waiting=queue_busy, size=LARGE_MESSAGE_BYTES)
    assert not answers_inline("queue", inline_running=0, queue_waiting=queue_empty, size=SMALL)


async def test_a_message_that_finds_the_pipeline_free_is_answered_with_its_verdict(forum: Running) -> None:
    refused = await send(forum.smtp_port, question(1, sender=STRANGER), mail_from=STRANGER, rcpt_tos=[GENERAL])
    assert refused.data is not None and refused.data[0] == 550, refused.data  # members only: the reply says so
    taken = await send(forum.smtp_port, question(2), mail_from=ALICE, rcpt_tos=[GENERAL])
    assert taken.data == VERDICT
    assert await posts(forum) == ["auto2@client.example"]  # stored before the 250, not after
    assert queue_of(forum).waiting() == []


async def test_mail_that_would_wait_is_queued_at_once_and_posted_when_the_pipeline_can(
    forum: Running, settings: Settings
) -> None:
    async with database_held(settings.database.url):
        first = asyncio.create_task(send(forum.smtp_port, question(1), mail_from=ALICE, rcpt_tos=[GENERAL]))

        async def first_in_pipeline() -> bool:
            return forum.inline.running == 1

        await until(first_in_pipeline, what="the first message running inline")
        # Another message meanwhile: durable in the queue and answered, though the database is held.
        second = await asyncio.wait_for(
            send(forum.smtp_port, question(2), mail_from=ALICE, rcpt_tos=[GENERAL]), 10)
        assert second.data == QUEUED
        assert len(queue_of(forum).waiting()) == 1
        held_back = await first
        assert held_back.data is not None and held_back.data[0] == 451, held_back.data  # the lock, not the mail
        # Nothing runs inline now, yet the queue holds a message: the next one goes behind it.
        third = await asyncio.wait_for(
            send(forum.smtp_port, question(3), mail_from=ALICE, rcpt_tos=[GENERAL]), 10)
        assert third.data == QUEUED
        assert len(queue_of(forum).waiting()) == 2

    async def queue_worked_off() -> bool:
        return queue_of(forum).waiting() == [] and len(await posts(forum)) == 2

    await until(queue_worked_off, timeout=30, what="the queued messages posted")
    assert await posts(forum) == ["auto2@client.example", "auto3@client.example"]
    # The pipeline free again: the retried first message gets its verdict as the reply.
    again = await send(forum.smtp_port, question(1), mail_from=ALICE, rcpt_tos=[GENERAL])
    assert again.data == VERDICT
    async with forum.deps.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Post)) == 3
