"""A message the pipeline fails on every time is shunted: counted per attempt, then taken (250), kept with its error,
the admins mailed once, and sent through again by an admin once the cause is fixed. A failure that may pass on
retry (the database) is never counted."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from qaflow_mail.cli import build_parser
from qaflow_mail.commands.common import CommandError
from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Disposition, InboundFailure, InboundMessage, Outbox, OutboxKind, Post, Source
from qaflow_mail.deps import Deps
from qaflow_mail.pipeline import body as body_reader
from qaflow_mail.pipeline.ingest import ingest, retry_shunted
from qaflow_mail.server.app import Running
from qaflow_mail.server.imap import PollCounts, polling
from qaflow_mail.services import shunt
from tests.dovecot import Dovecot
from tests.integration.test_imap_poller import imap_deps
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, ADMIN = "alice@example.org", "admin@example.org"


@pytest.fixture
async def forum(gateway: Running) -> Running:
    async with gateway.deps.sessions() as session, session.begin():
        now = datetime.now(UTC)
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_user(session, email=ALICE, now=now)
        await queries.add_user(session, email=ADMIN, is_admin=True, now=now)
    return gateway


def poison(subject: str = "Poison") -> bytes:
    return make_mail(sender=ALICE, to=GENERAL, subject=subject, body="This body breaks the trimmer.",
                     message_id=f"<{subject.lower()}@client.test>").as_bytes()


@pytest.fixture
def breaking_trimmer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the body fails on every message whose subject says Poison, as a bug in the trimmer would."""
    real = body_reader.extract_content

    def extract(parsed: Any) -> Any:
        if "Poison" in parsed.subject:
            raise ValueError("trimmer bug on this input")
        return real(parsed)

    monkeypatch.setattr(body_reader, "extract_content", extract)


async def rows(forum: Running, model: type) -> list[Any]:
    async with forum.deps.sessions() as session:
        return list((await session.scalars(select(model).order_by(model.id))).all())


async def test_a_message_failing_every_time_is_shunted_on_the_third_attempt(
    forum: Running, breaking_trimmer: None
) -> None:
    replies = [(await send(forum.smtp_port, poison(), mail_from=ALICE, rcpt_tos=[GENERAL])).data for _ in range(4)]
    assert [reply[0] if reply else None for reply in replies] == [451, 451, 250, 250]
    assert replies[0] is not None and replies[0][1].startswith("4.3.0")
    assert replies[2] is not None and "kept for the forum's admins" in replies[2][1]
    records = await rows(forum, InboundMessage)
    # the fourth copy is a duplicate of the shunted one: taken, not counted again
    assert [r.disposition for r in records] == [Disposition.SHUNTED, Disposition.DISCARDED]
    assert "shunted after 3 failed attempts: ValueError: trimmer bug on this input" in records[0].reason
    assert records[0].raw.replace(b"\r\n", b"\n") == poison().replace(b"\r\n", b"\n")
    assert await rows(forum, InboundFailure) == []
    assert await rows(forum, Post) == []
    notices = [r for r in await rows(forum, Outbox) if r.kind == OutboxKind.NOTICE.value]
    assert [n.recipient for n in notices] == [ADMIN]
    assert b"qaflow-mail shunt retry" in notices[0].raw


async def test_a_message_that_passes_on_retry_forgets_its_failures(
    forum: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = body_reader.extract_content
    calls: list[int] = []

    def flaky(parsed: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("once only")
        return real(parsed)

    monkeypatch.setattr(body_reader, "extract_content", flaky)
    first = await send(forum.smtp_port, poison("Flaky"), mail_from=ALICE, rcpt_tos=[GENERAL])
    assert first.data_code == 451
    assert [f.attempts for f in await rows(forum, InboundFailure)] == [1]
    second = await send(forum.smtp_port, poison("Flaky"), mail_from=ALICE, rcpt_tos=[GENERAL])
    assert second.data_code == 250
    assert await rows(forum, InboundFailure) == []
    assert len(await rows(forum, Post)) == 1


async def test_a_database_failure_is_temporary_and_never_counted(
    forum: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(parsed: Any) -> Any:
        raise OperationalError("INSERT ...", {}, Exception("database is locked"))

    monkeypatch.setattr(body_reader, "extract_content", locked)
    for _ in range(4):
        assert (await send(forum.smtp_port, poison(), mail_from=ALICE, rcpt_tos=[GENERAL])).data_code == 451
    assert await rows(forum, InboundFailure) == []
    assert await rows(forum, InboundMessage) == []


async def test_a_shunted_message_goes_through_once_retried(
    forum: Running, breaking_trimmer: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        await send(forum.smtp_port, poison(), mail_from=ALICE, rcpt_tos=[GENERAL])
    async with forum.deps.sessions() as session:
        [shunted] = await shunt.list_shunted(session)
    assert shunted.recipients == [GENERAL] and shunted.from_address == ALICE
    monkeypatch.undo()  # the bug is fixed

    result = await retry_shunted(forum.deps, shunted.id)
    assert result is not None and result.reply.is_success
    assert [p.subject for p in await rows(forum, Post)] == ["Poison"]
    assert [r.disposition for r in await rows(forum, InboundMessage)] == [Disposition.RETRIED, Disposition.ACCEPTED]
    async with forum.deps.sessions() as session:
        assert await shunt.list_shunted(session) == []
    assert await retry_shunted(forum.deps, shunted.id) is None  # nothing left to retry


async def test_a_retry_that_fails_again_stays_shunted(forum: Running, breaking_trimmer: None) -> None:
    for _ in range(3):
        await send(forum.smtp_port, poison(), mail_from=ALICE, rcpt_tos=[GENERAL])
    [record] = await rows(forum, InboundMessage)
    with pytest.raises(ValueError, match="trimmer bug"):
        await retry_shunted(forum.deps, record.id)
    [again] = await rows(forum, InboundMessage)
    assert again.disposition == Disposition.SHUNTED and again.reason.startswith("retry failed: ValueError")


@pytest.mark.parametrize("settings", [1], indirect=True)
async def test_imap_moves_a_shunted_message_to_the_failed_mailbox(
    forum: Running, dovecot: Dovecot, breaking_trimmer: None
) -> None:
    dovecot.deliver(poison())
    async with polling(imap_deps(forum, dovecot, failed_mailbox="Failed", processed_mailbox="Done")) as poller:
        assert await poller.poll_once() == PollCounts(found=1, ingested=1)
    assert dovecot.messages() == []
    assert len(dovecot.messages("Failed")) == 1 and dovecot.messages("Done") == []
    assert [r.disposition for r in await rows(forum, InboundMessage)] == [Disposition.SHUNTED]


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    after = getattr(request, "param", 3)
    return dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, shunt_after_failures=after))


def test_shunt_list_and_retry_from_the_command_line(
    settings: Settings, breaking_trimmer: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def shunt_one() -> None:
        engine = create_engine(settings.database.url)
        deps = Deps.build(settings, session_factory(engine))
        try:
            async with deps.sessions() as session, session.begin():
                await queries.add_category(session, slug="general", name="General", allow_strangers=False)
                await queries.add_user(session, email=ALICE, now=datetime.now(UTC))
            for _ in range(2):
                with pytest.raises(ValueError):
                    await ingest(poison(), envelope_from=ALICE, recipients=[GENERAL], source=Source.SMTP, deps=deps)
            result = await ingest(poison(), envelope_from=ALICE, recipients=[GENERAL], source=Source.SMTP, deps=deps)
            assert result.shunted and result.reply.code == 250
        finally:
            await engine.dispose()

    asyncio.run(shunt_one())
    capsys.readouterr()
    args = build_parser().parse_args(["shunt", "list", "--json"])
    assert args.func(settings, args) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["from_address"] == ALICE and listed["recipients"] == [GENERAL]

    args = build_parser().parse_args(["shunt", "retry", str(listed["id"])])
    with pytest.raises(CommandError, match="failed again and stays shunted: ValueError"):
        args.func(settings, args)
    monkeypatch.undo()  # the trimmer is fixed
    assert args.func(settings, args) == 0
    assert "sent through again: 250 2.0.0" in capsys.readouterr().out
    with pytest.raises(CommandError, match="no shunted message"):
        args.func(settings, args)
