"""The IMAP poller against a real Dovecot on loopback, writing to the real database through the one ingest."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from qaflow_mail.config import ImapSettings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, Disposition, InboundMessage, Outbox, OutboxKind, Post, Topic, User
from qaflow_mail.deps import Deps
from qaflow_mail.server.app import Running
from qaflow_mail.server.imap import Backoff, ImapPoller, PollCounts, polling
from tests.dovecot import Dovecot
from tests.integration.conftest import DovecotFactory
from tests.smtp_client import make_mail

DOMAIN = "forum.test"
ALICE = "alice@example.org"
BOB = "bob@example.net"
DEADLINE = 10.0
FAST_RETRY = Backoff(initial=0.05, maximum=0.2)


@pytest.fixture
async def forum(gateway: Running) -> Running:
    async with gateway.deps.sessions() as session, session.begin():
        now = datetime.now(UTC)
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_category(session, slug="help", name="Help", allow_strangers=False)
        await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
        await queries.add_user(session, email=BOB, display_name="Bob", now=now)
    return gateway


def imap_deps(forum: Running, server: Dovecot, **imap: object) -> Deps:
    """The gateway's deps with [imap] pointing at the test server (plain IMAP unless told otherwise)."""
    values: dict[str, object] = {"enabled": False, "host": server.host, "port": server.port, "ssl": False,
                                 "username": server.user, "password": server.password, "poll_interval": 30.0}
    values.update(imap)
    settings = dataclasses.replace(forum.deps.settings, imap=ImapSettings(**values))  # type: ignore[arg-type]
    return dataclasses.replace(forum.deps, settings=settings)


def mail(*, sender: str = ALICE, to: str = f"general@{DOMAIN}", message_id: str, subject: str = "A question",
         body: str = "How does this work?", **headers: str) -> bytes:
    extra = {name.replace("_", "-"): value for name, value in headers.items() if name != "in_reply_to"}
    msg = make_mail(sender=sender, to=to, subject=subject, body=body, message_id=message_id,
                    in_reply_to=headers.get("in_reply_to"), headers=extra)
    return msg.as_bytes()


async def count(forum: Running, model: type) -> int:
    async with forum.deps.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def posts(forum: Running) -> list[Post]:
    async with forum.deps.sessions() as session:
        return list((await session.scalars(select(Post).order_by(Post.id))).all())


async def inbound(forum: Running) -> list[InboundMessage]:
    async with forum.deps.sessions() as session:
        return list((await session.scalars(select(InboundMessage).order_by(InboundMessage.id))).all())


async def eventually(check: Callable[[], Awaitable[bool]], *, what: str, within: float = DEADLINE) -> float:
    """Poll `check` until it holds; fail after `within` seconds. Returns the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def idling(poller: ImapPoller) -> bool:
    return poller.idling


# --- one round at a time (poll_once, no background task) ------------------------------------------------------


async def test_appended_mail_becomes_a_topic_in_the_category_its_headers_name(forum: Running, dovecot: Dovecot) -> None:
    dovecot.deliver(mail(message_id="<to-general@c.test>", subject="Printer on fire"))
    dovecot.deliver(mail(message_id="<delivered-help@c.test>", subject="Which category?",
                         Delivered_To=f"help@{DOMAIN}"))
    async with polling(imap_deps(forum, dovecot)) as poller:
        counts = await poller.poll_once()
    assert counts == PollCounts(found=2, ingested=2)
    async with forum.deps.sessions() as session:
        rows = (await session.execute(
            select(Topic.subject, Category.slug, User.email, Post.source)
            .join(Category, Category.id == Topic.category_id).join(User, User.id == Topic.author_id)
            .join(Post, Post.topic_id == Topic.id).order_by(Topic.id)
        )).all()
    assert [tuple(r) for r in rows] == [("Printer on fire", "general", ALICE, "imap"),
                                        ("Which category?", "help", ALICE, "imap")]
    assert [r.source for r in await inbound(forum)] == ["imap", "imap"]
    assert dovecot.messages() == []  # flagged \Seen \Deleted and expunged once committed


async def test_reply_by_in_reply_to_threads(forum: Running, dovecot: Dovecot) -> None:
    dovecot.deliver(mail(message_id="<q@c.test>", subject="Q"))
    dovecot.deliver(mail(sender=BOB, message_id="<a@c.test>", subject="Re: Q", body="Answer.",
                         in_reply_to="<q@c.test>"))
    async with polling(imap_deps(forum, dovecot)) as poller:
        assert (await poller.poll_once()).ingested == 2
    question, answer = await posts(forum)
    assert answer.topic_id == question.topic_id
    assert answer.parent_id == question.id
    assert await count(forum, Topic) == 1


async def test_processed_mail_is_moved_to_the_processed_mailbox(forum: Running, dovecot: Dovecot) -> None:
    dovecot.deliver(mail(message_id="<move-me@c.test>"))
    async with polling(imap_deps(forum, dovecot, processed_mailbox="Processed")) as poller:
        assert (await poller.poll_once()).ingested == 1
    assert dovecot.messages() == []
    [(_uid, flags)] = dovecot.messages("Processed")
    assert "\\Deleted" not in flags
    assert await count(forum, Post) == 1


async def test_server_without_move_or_uidplus_gets_copy_flag_and_expunge(
    forum: Running, dovecot_factory: DovecotFactory
) -> None:
    server = dovecot_factory(capabilities="IMAP4rev1")
    server.deliver(mail(message_id="<copy-me@c.test>"))
    server.deliver(b"From: someone@example.com\r\nSubject: not for us\r\n\r\nleft alone\r\n")
    with server.client() as conn:  # someone flagged it \Deleted without expunging: it must survive our EXPUNGE
        conn.select("INBOX")
        conn.store("2", "+FLAGS", "(\\Seen)")
    async with polling(imap_deps(forum, server, processed_mailbox="Processed")) as poller:
        assert await poller.poll_once() == PollCounts(found=1, ingested=1)
    assert [flags for _uid, flags in server.messages()] == [frozenset({"\\Seen"})]
    assert len(server.messages("Processed")) == 1
    assert await count(forum, Post) == 1


async def test_refused_message_is_marked_processed_and_recorded(forum: Running, dovecot: Dovecot) -> None:
    stranger = "stranger@example.com"
    dovecot.deliver(mail(sender=stranger, message_id="<stranger@c.test>"))
    # A registered user's reply with nothing but a quote: refused too.
    dovecot.deliver(mail(message_id="<quote-only@c.test>", body="> How does this work?\n"))
    async with polling(imap_deps(forum, dovecot)) as poller:
        assert await poller.poll_once() == PollCounts(found=2, ingested=2, rejected=2)
    assert dovecot.messages() == []
    records = {r.envelope_from: r for r in await inbound(forum)}
    assert (records[stranger].disposition, records[stranger].source) == (Disposition.REJECTED, "imap")
    assert "5.7.1" in records[stranger].reason or "unknown sender" in records[stranger].reason
    assert records[ALICE].disposition == Disposition.REJECTED
    assert await count(forum, Post) == 0
    # No SMTP reply carries a refusal here, so a notice does: to the registered user only. The stranger's From
    # is unauthenticated and could be forged: a notice there would be backscatter.
    async with forum.deps.sessions() as session:
        notices = (await session.scalars(select(Outbox.recipient).where(Outbox.kind == OutboxKind.NOTICE))).all()
    assert notices == [ALICE]


async def test_failed_ingest_leaves_the_message_unseen_for_a_later_round(
    forum: Running, dovecot: Dovecot, tmp_path: Path
) -> None:
    dovecot.deliver(mail(message_id="<db-down@c.test>"))
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/qaflow.db")
    try:
        down = dataclasses.replace(imap_deps(forum, dovecot), sessions=async_sessionmaker(engine))
        async with polling(down) as poller:
            assert await poller.poll_once() == PollCounts(found=1, failed=1)
            assert await poller.poll_once() == PollCounts(found=1, waiting=1)  # not before poll_interval
    finally:
        await engine.dispose()
    [(_uid, flags)] = dovecot.messages()
    assert "\\Seen" not in flags and "\\Deleted" not in flags
    async with polling(imap_deps(forum, dovecot)) as poller:  # the database is back
        assert await poller.poll_once() == PollCounts(found=1, ingested=1)
    assert await count(forum, Post) == 1
    assert dovecot.messages() == []


async def test_temporary_refusal_stays_unseen_like_an_mta_retry(forum: Running, dovecot: Dovecot) -> None:
    deps = imap_deps(forum, dovecot)
    deps = dataclasses.replace(deps, settings=dataclasses.replace(
        deps.settings, limits=dataclasses.replace(deps.settings.limits, sender_rate_per_hour=1)))
    dovecot.deliver(mail(message_id="<first@c.test>"))
    dovecot.deliver(mail(message_id="<second@c.test>"))
    async with polling(deps) as poller:
        assert await poller.poll_once() == PollCounts(found=2, ingested=1, deferred=1)
    [(_uid, flags)] = dovecot.messages()
    assert "\\Seen" not in flags
    assert [r.disposition for r in await inbound(forum)] == [Disposition.ACCEPTED, Disposition.REJECTED]
    assert await count(forum, Post) == 1


async def test_crash_between_commit_and_flag_posts_once(
    forum: Running, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.deliver(mail(message_id="<crash@c.test>"))
    async with polling(imap_deps(forum, dovecot)) as poller:

        async def crash(*args: object, **kwargs: object) -> None:
            raise ConnectionResetError("the process died after the commit")

        monkeypatch.setattr(poller, "_mark_processed", crash)
        with pytest.raises(ConnectionResetError):
            await poller.poll_once()
        assert await count(forum, Post) == 1
        [(_uid, flags)] = dovecot.messages()
        assert "\\Seen" not in flags  # BODY.PEEK[] did not mark it; nothing else did
        monkeypatch.undo()
        assert await poller.poll_once() == PollCounts(found=1, ingested=1)  # delivered again ...
    assert await count(forum, Post) == 1  # ... and posted once
    assert [r.disposition for r in await inbound(forum)] == [Disposition.ACCEPTED, Disposition.DISCARDED]
    assert dovecot.messages() == []


async def test_imaps_verified_with_the_ca_file(forum: Running, dovecot: Dovecot) -> None:
    dovecot.deliver(mail(message_id="<tls@c.test>"))
    tls = {"ssl": True, "port": dovecot.ssl_port}
    async with polling(imap_deps(forum, dovecot, **tls)) as poller:  # the system store does not know our CA
        with pytest.raises(ssl.SSLCertVerificationError):
            await poller.poll_once()
    async with polling(imap_deps(forum, dovecot, **tls, ca_file=str(dovecot.ca_cert))) as poller:
        assert await poller.poll_once() == PollCounts(found=1, ingested=1)
    assert await count(forum, Post) == 1


# --- the background task -----------------------------------------------------------------------------------------


async def test_idle_push_ingests_promptly(forum: Running, dovecot: Dovecot) -> None:
    deps = imap_deps(forum, dovecot, enabled=True, use_idle=True, poll_interval=60.0)
    async with polling(deps) as poller:
        await eventually(lambda: idling(poller), what="the poller idles")
        assert poller.rounds == 1
        dovecot.deliver(mail(message_id="<pushed@c.test>"))
        took = await eventually(lambda: _has_posts(forum, 1), what="the pushed mail is posted")
        assert took < 5.0  # far below poll_interval: the push woke it, not the timer
        await eventually(lambda: idling(poller), what="the poller idles again")
        assert poller.rounds == 2
        assert await poller.poll_once() == PollCounts()  # through the running task; nothing left
        await eventually(lambda: idling(poller), what="the poller idles once more")
        leaving = time.monotonic()
    assert time.monotonic() - leaving < 2.0  # leaving the context ends IDLE and logs out at once
    assert not poller.running
    assert dovecot.messages() == []


async def test_without_idle_it_polls_on_the_interval(forum: Running, dovecot_factory: DovecotFactory) -> None:
    server = dovecot_factory(capabilities="IMAP4rev1 UIDPLUS")
    deps = imap_deps(forum, server, enabled=True, use_idle=True, poll_interval=0.2)
    async with polling(deps) as poller:
        await eventually(lambda: _rounds(poller, 1), what="a first round")
        server.deliver(mail(message_id="<timer@c.test>"))
        await eventually(lambda: _has_posts(forum, 1), what="the mail is posted on the next timed round")
        assert not poller.idling
    assert server.messages() == []


async def test_reconnects_after_the_server_restarts(forum: Running, dovecot: Dovecot) -> None:
    deps = imap_deps(forum, dovecot, enabled=True, use_idle=True, poll_interval=60.0)
    async with polling(deps, backoff=FAST_RETRY) as poller:
        await eventually(lambda: idling(poller), what="the poller idles")
        dovecot.stop()
        dovecot.drop(mail(message_id="<while-down@c.test>"))  # the MTA delivers while IMAP is down
        await eventually(lambda: _not(idling(poller)), what="the poller notices the lost connection")
        dovecot.start()
        await eventually(lambda: _has_posts(forum, 1), what="the mail that arrived meanwhile is posted")
        assert poller.connects == 2
    assert dovecot.messages() == []


async def _has_posts(forum: Running, n: int) -> bool:
    return await count(forum, Post) >= n


async def _rounds(poller: ImapPoller, n: int) -> bool:
    return poller.rounds >= n


async def _not(check: Awaitable[bool]) -> bool:
    return not await check
