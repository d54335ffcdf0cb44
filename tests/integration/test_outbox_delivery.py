"""Draining the outbox into a Maildir and into a real SMTP sink: retries, bounces, claims, the sender task, the CLI.

Time is the test's: every drain reads `deps.clock`, and the tests move it forward instead of waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import ssl
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from qaflow_mail.commands import outbox as outbox_command
from qaflow_mail.commands.common import CommandError
from qaflow_mail.config import LimitsSettings, Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import BounceRecord, Outbox, OutboxKind, OutboxStatus, User, UserStatus
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.bounce_score import record_delivery_failure
from qaflow_mail.outbound.mailer import DeliveryError, MaildirMailer, SmtpMailer, build_mailer
from qaflow_mail.outbound.outbox import (
    DrainStats,
    OutgoingMessage,
    claim,
    drain_once,
    enqueue,
    mark_failed,
    mark_sent,
    requeue,
)
from qaflow_mail.outbound.sender import sending
from qaflow_mail.outbound.sent_journal import SentJournal
from tests.sink import SmtpSink

DOMAIN = "forum.test"
ALICE = "alice@example.org"
BOB = "bob@example.net"
CAROL = "carol@example.com"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def outbound(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, outbound=dataclasses.replace(settings.outbound, **changes))


def smtp_settings(settings: Settings, sink: SmtpSink, **changes: Any) -> Settings:
    return outbound(settings, transport="smtp", smtp_host="127.0.0.1", smtp_port=sink.port, **changes)


DepsFactory = Callable[..., Awaitable[Deps]]


@pytest.fixture
async def make_deps() -> AsyncIterator[DepsFactory]:
    """Deps on its own engine (as a separate process would have), disposed at the end of the test."""
    engines = []

    async def make(settings: Settings, clock: Clock | None = None) -> Deps:
        engine = create_engine(settings.database.url)
        engines.append(engine)
        return Deps.build(settings, session_factory(engine), clock=clock or Clock())

    yield make
    for engine in engines:
        await engine.dispose()


async def add_users(deps: Deps, *addresses: str) -> dict[str, int]:
    async with deps.sessions() as session, session.begin():
        return {a: (await queries.add_user(session, email=a, display_name=a.split("@")[0].title(), now=T0)).id
                for a in addresses}


def rendered(recipient: str, message_id: str, subject: str = "A new post", body: str = "there is a new post.") -> bytes:
    msg = EmailMessage()
    msg["From"] = f'"Alice via QAFlow Test" <notifications@{DOMAIN}>'
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{message_id}>"
    msg.set_content(f"Hello {recipient}, {body}\n")
    return msg.as_bytes(policy=policy.SMTP)


async def enqueue_rows(deps: Deps, recipients: Iterable[tuple[str, int | None]], *, tag: str = "n") -> list[str]:
    """One outbox row per recipient, each with its own Message-ID; returns the Message-IDs."""
    messages = []
    for index, (recipient, user_id) in enumerate(recipients):
        message_id = f"{tag}{index}.{recipient.split('@')[0]}@{DOMAIN}"
        messages.append(OutgoingMessage(
            kind=OutboxKind.NOTIFICATION, dedupe_key=f"test:{message_id}", message_id=message_id,
            envelope_from=f"bounces+{tag}{index}@{DOMAIN}", recipient=recipient,
            raw=rendered(recipient, message_id), user_id=user_id,
        ))
    async with deps.sessions() as session, session.begin():
        await enqueue(session, messages, now=deps.clock())
    return [m.message_id for m in messages]


async def rows(deps: Deps) -> list[Outbox]:
    async with deps.sessions() as session:
        return list((await session.scalars(select(Outbox).order_by(Outbox.id))).all())


async def bounces(deps: Deps) -> list[BounceRecord]:
    async with deps.sessions() as session:
        return list((await session.scalars(select(BounceRecord).order_by(BounceRecord.id))).all())


async def user(deps: Deps, user_id: int) -> User:
    async with deps.sessions() as session:
        found = await session.get(User, user_id)
    assert found is not None
    return found


def deliveries(sink: SmtpSink) -> Counter[tuple[str, str]]:
    """(Message-ID, recipient) → how many times the sink received it."""
    return Counter((m.message_id.strip("<>"), rcpt) for m in sink.messages for rcpt in m.rcpt_tos)


# -- Maildir transport ----------------------------------------------------------------------------------------


async def test_maildir_transport_writes_one_readable_file_per_row(settings: Settings, make_deps: DepsFactory) -> None:
    deps = await make_deps(settings)
    users = await add_users(deps, ALICE, BOB)
    ids = await enqueue_rows(deps, [(ALICE, users[ALICE]), (BOB, users[BOB]), (CAROL, None)])
    mailer = build_mailer(settings)
    assert isinstance(mailer, MaildirMailer)

    stats = await drain_once(deps, mailer, worker="w1")

    assert stats == DrainStats(claimed=3, sent=3, retried=0, failed=0)
    files = sorted((Path(settings.outbound.outbox_dir) / "new").iterdir())
    assert len(files) == 3
    seen = {}
    for path in files:
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        seen[str(message["Message-ID"]).strip("<>")] = message
    assert set(seen) == set(ids)
    carol = seen[ids[2]]
    assert carol["X-Envelope-To"] == f"<{CAROL}>"
    assert carol["Return-Path"] == f"<bounces+n2@{DOMAIN}>"
    assert carol["To"] == CAROL
    body = carol.get_body(("plain",))
    assert body is not None and "there is a new post" in body.get_content()
    stored = await rows(deps)
    assert [(r.status, r.attempts, r.sent_at, r.last_error) for r in stored] == [("sent", 1, T0, "")] * 3
    assert await drain_once(deps, mailer, worker="w1") == DrainStats()


# -- SMTP transport ---------------------------------------------------------------------------------------------


async def test_smtp_transport_delivers_to_the_sink_and_reuses_connections(
    settings: Settings, make_deps: DepsFactory
) -> None:
    async with SmtpSink() as sink:
        settings = smtp_settings(settings, sink, concurrency=2)
        deps = await make_deps(settings)
        users = await add_users(deps, ALICE, BOB)
        first = await enqueue_rows(deps, [(ALICE, users[ALICE]), (BOB, users[BOB])], tag="a")
        mailer = build_mailer(settings)
        assert isinstance(mailer, SmtpMailer)
        try:
            assert (await drain_once(deps, mailer, worker="w1")).sent == 2
            second = await enqueue_rows(deps, [(ALICE, users[ALICE]), (BOB, users[BOB])], tag="b")
            assert (await drain_once(deps, mailer, worker="w1")).sent == 2
        finally:
            await mailer.close()

        messages = await sink.wait_for(4)
    assert deliveries(sink) == Counter({(mid, rcpt): 1 for mid, rcpt in
                                        zip(first + second, [ALICE, BOB, ALICE, BOB], strict=True)})
    by_id = {m.message_id.strip("<>"): m for m in messages}
    assert by_id[first[1]].mail_from == f"bounces+a1@{DOMAIN}"
    assert by_id[first[1]].rcpt_tos == (BOB,)
    assert by_id[first[1]].parsed()["Subject"] == "A new post"
    assert sink.connections <= 2, "the second batch should reuse the pooled connections"
    assert all(r.status == OutboxStatus.SENT for r in await rows(deps))


async def test_eight_bit_bodies_and_international_addresses_arrive_intact(
    settings: Settings, make_deps: DepsFactory
) -> None:
    async with SmtpSink() as sink:
        settings = smtp_settings(settings, sink)
        deps = await make_deps(settings)
        raw = rendered("zoë@exämple.org", f"utf8@{DOMAIN}", body="Grüße aus Köln — 日本語もOK.")
        assert not raw.isascii()
        async with deps.sessions() as session, session.begin():
            await enqueue(session, [OutgoingMessage(
                kind=OutboxKind.NOTIFICATION, dedupe_key="utf8", message_id=f"utf8@{DOMAIN}",
                envelope_from=f"bounces@{DOMAIN}", recipient="zoë@exämple.org", raw=raw)], now=T0)
        mailer = build_mailer(settings)
        try:
            assert (await drain_once(deps, mailer, worker="w1")).sent == 1
        finally:
            await mailer.close()
    (message,) = sink.messages
    assert message.rcpt_tos == ("zoë@exämple.org",)
    assert message.raw.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    body = message.parsed().get_body(("plain",))
    assert body is not None and "Grüße aus Köln — 日本語もOK." in body.get_content()


async def test_sink_down_then_up_every_message_arrives_exactly_once(
    settings: Settings, make_deps: DepsFactory
) -> None:
    clock = Clock()
    async with SmtpSink() as sink:
        settings = smtp_settings(settings, sink, concurrency=3, retry_base_seconds=30, retry_max_seconds=600)
        deps = await make_deps(settings, clock)
        users = await add_users(deps, ALICE, BOB, CAROL)
        recipients = [(a, users[a]) for a in (ALICE, BOB, CAROL)]
        mailer = build_mailer(settings)
        try:
            # Warm the pool, then take the MTA away: the pooled connections die with it.
            warm = await enqueue_rows(deps, recipients[:1], tag="warm")
            assert (await drain_once(deps, mailer, worker="w1")).sent == 1
            await sink.stop()
            expected = await enqueue_rows(deps, recipients * 2, tag="down")

            down = await drain_once(deps, mailer, worker="w1")
            assert down == DrainStats(claimed=6, sent=0, retried=6, failed=0)
            waiting = [r for r in await rows(deps) if r.status == OutboxStatus.PENDING]
            assert len(waiting) == 6
            assert {(r.attempts, r.next_attempt_at) for r in waiting} == {(1, T0 + timedelta(seconds=30))}
            assert all(r.last_error for r in waiting)

            clock.advance(29)
            assert await drain_once(deps, mailer, worker="w1") == DrainStats(), "not due before the backoff"

            await sink.start()
            clock.advance(1)
            assert (await drain_once(deps, mailer, worker="w1")).sent == 6
            clock.advance(3600)
            assert await drain_once(deps, mailer, worker="w1") == DrainStats()
        finally:
            await mailer.close()
        await sink.wait_for(7)

    counts = deliveries(sink)
    assert counts == Counter({(mid, rcpt): 1 for mid, rcpt in
                              zip(warm + expected, [ALICE, ALICE, BOB, CAROL, ALICE, BOB, CAROL], strict=True)})
    assert {(r.status, r.attempts) for r in await rows(deps) if r.message_id in expected} == {("sent", 2)}


async def test_550_marks_the_row_failed_and_records_a_hard_bounce(
    settings: Settings, make_deps: DepsFactory
) -> None:
    clock = Clock()
    async with SmtpSink() as sink:
        sink.fail_with(550, "5.1.1 <bob@example.net>: no such user", only={BOB, CAROL})
        settings = smtp_settings(settings, sink)
        deps = await make_deps(settings, clock)
        users = await add_users(deps, ALICE, BOB, CAROL)
        ids = await enqueue_rows(deps, [(ALICE, users[ALICE]), (BOB, users[BOB]), (CAROL, None)])
        mailer = build_mailer(settings)
        try:
            stats = await drain_once(deps, mailer, worker="w1")
        finally:
            await mailer.close()

    assert stats == DrainStats(claimed=3, sent=1, retried=0, failed=2)
    assert deliveries(sink) == Counter({(ids[0], ALICE): 1})
    by_recipient = {r.recipient: r for r in await rows(deps)}
    assert by_recipient[ALICE].status == OutboxStatus.SENT
    for address in (BOB, CAROL):
        row = by_recipient[address]
        assert row.status == OutboxStatus.FAILED
        assert row.last_error.startswith("550 5.1.1")
        assert row.sent_at is None
    recorded = await bounces(deps)
    # Carol's row carried no user id: the bounce is still tied to her account, by address.
    assert sorted((b.user_id, b.address, b.outbox_id, b.kind) for b in recorded) == sorted([
        (users[BOB], BOB, by_recipient[BOB].id, "hard"), (users[CAROL], CAROL, by_recipient[CAROL].id, "hard"),
    ])
    assert all("no such user" in b.diagnostic and b.received_at == T0 for b in recorded)
    bob = await user(deps, users[BOB])
    assert bob.bounce_score == settings.limits.hard_bounce_score
    assert bob.status == UserStatus.ACTIVE
    assert (await user(deps, users[ALICE])).bounce_score == 0


async def test_451_is_retried_later_with_backoff_then_given_up_then_requeued(
    settings: Settings, make_deps: DepsFactory
) -> None:
    clock = Clock()
    async with SmtpSink() as sink:
        sink.fail_with(451, "4.3.0 Mailbox busy, try later")
        settings = smtp_settings(settings, sink, retry_base_seconds=60, retry_max_seconds=150, max_attempts=4)
        deps = await make_deps(settings, clock)
        users = await add_users(deps, BOB)
        await enqueue_rows(deps, [(BOB, users[BOB])])
        mailer = build_mailer(settings)
        try:
            schedule = []
            for expected_wait in (60, 120, 150):  # doubling, then capped
                assert (await drain_once(deps, mailer, worker="w1")).retried == 1
                (row,) = await rows(deps)
                assert row.status == OutboxStatus.PENDING
                assert row.last_error.startswith("451 4.3.0")
                schedule.append(row.next_attempt_at - clock.now)
                clock.advance(expected_wait - 1)
                assert await drain_once(deps, mailer, worker="w1") == DrainStats()
                clock.advance(1)
            assert schedule == [timedelta(seconds=s) for s in (60, 120, 150)]

            assert (await drain_once(deps, mailer, worker="w1")).failed == 1
            (row,) = await rows(deps)
            assert (row.status, row.attempts) == (OutboxStatus.FAILED, 4)
            assert row.last_error.startswith("gave up after 4 attempts: 451")
            assert await bounces(deps) == [], "running out of retries says nothing about the address"
            assert len(sink.refusals) == 4

            sink.accept_all()
            async with deps.sessions() as session, session.begin():
                await requeue(session, row.id, clock.now)
            (row,) = await rows(deps)
            assert (row.status, row.attempts, row.next_attempt_at) == (OutboxStatus.PENDING, 0, clock.now)
            assert (await drain_once(deps, mailer, worker="w1")).sent == 1
        finally:
            await mailer.close()
        await sink.wait_for(1)
    assert (await user(deps, users[BOB])).bounce_score == 0


async def test_a_broken_pooled_connection_is_retried_once_on_a_fresh_one(
    settings: Settings, make_deps: DepsFactory
) -> None:
    async with SmtpSink() as sink:
        settings = smtp_settings(settings, sink, concurrency=1)
        deps = await make_deps(settings)
        users = await add_users(deps, ALICE, BOB)
        mailer = build_mailer(settings)
        try:
            await enqueue_rows(deps, [(ALICE, users[ALICE])], tag="a")
            assert (await drain_once(deps, mailer, worker="w1")).sent == 1
            sink.hang_up_next(1)  # the pooled connection breaks; the fresh one works
            await enqueue_rows(deps, [(BOB, users[BOB])], tag="b")
            assert (await drain_once(deps, mailer, worker="w1")).sent == 1
            sink.hang_up_next(2)  # both break: a temporary failure, no bounce
            await enqueue_rows(deps, [(ALICE, users[ALICE])], tag="c")
            assert (await drain_once(deps, mailer, worker="w1")).retried == 1
        finally:
            await mailer.close()
    assert len(sink.messages) == 2
    last = (await rows(deps))[-1]
    assert last.status == OutboxStatus.PENDING
    assert "connection lost" in last.last_error
    assert await bounces(deps) == []


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = directory / "sink.crt", directory / "sink.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_starttls_and_auth(settings: Settings, make_deps: DepsFactory, tmp_path: Path) -> None:
    cert, key = _self_signed_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with SmtpSink(tls_context=server_tls, credentials=("forum", "s3cret")) as sink:
        good = smtp_settings(settings, sink, smtp_starttls=True, smtp_ca_file=str(cert), smtp_username="forum",
                             smtp_password="s3cret")
        deps = await make_deps(good)
        users = await add_users(deps, ALICE)
        await enqueue_rows(deps, [(ALICE, users[ALICE])])
        mailer = build_mailer(good)
        try:
            assert (await drain_once(deps, mailer, worker="w1")).sent == 1
        finally:
            await mailer.close()

        wrong = SmtpMailer(outbound(good, smtp_password="wrong").outbound, local_hostname=DOMAIN)
        with pytest.raises(DeliveryError) as refused:
            await wrong.send(f"bounces@{DOMAIN}", ALICE, rendered(ALICE, f"x@{DOMAIN}"))
        await wrong.close()
    assert len(sink.messages) == 1
    # A relay refusing our login is our problem, not the recipient's: never a permanent failure (no bounce).
    assert refused.value.permanent is False
    assert refused.value.code == 535


async def test_one_connection_carries_accepted_and_refused_mail_in_turn(settings: Settings) -> None:
    """After the first message a pooled connection runs MAIL/RCPT/DATA itself (no address parsing, SIZE counted
    from the CRLF-ended message): a refusal leaves the connection usable (RSET), with the same answers as the
    first message got, and a message or address that is not plain still goes through aiosmtplib's sendmail."""
    async with SmtpSink() as sink:
        mailer = SmtpMailer(outbound(smtp_settings(settings, sink), concurrency=1).outbound, local_hostname=DOMAIN)
        sender = f"bounces+n1={DOMAIN}@{DOMAIN}"
        try:
            first = rendered(ALICE, f"1@{DOMAIN}")
            await mailer.send(sender, ALICE, first)  # greets the relay (EHLO) on the way
            sink.fail_with(550, "5.1.1 No such user", only={BOB})
            with pytest.raises(DeliveryError) as unknown:
                await mailer.send(sender, BOB, rendered(BOB, f"2@{DOMAIN}"))
            sink.fail_with(451, "4.3.0 Try later")
            with pytest.raises(DeliveryError) as busy:
                await mailer.send(sender, CAROL, rendered(CAROL, f"3@{DOMAIN}"))
            sink.accept_all()
            second = rendered(CAROL, f"4@{DOMAIN}", body="a second line.\r\n.a line that starts with a dot")
            await mailer.send(sender, CAROL, second)
            await mailer.send(sender, f"Carol <{CAROL}>", rendered(CAROL, f"5@{DOMAIN}").replace(b"\r\n", b"\n"))
            arrived = await sink.wait_for(3)
        finally:
            await mailer.close()
    assert (unknown.value.permanent, unknown.value.code) == (True, 550)
    assert (busy.value.permanent, busy.value.code) == (False, 451)
    assert sink.connections == 1, "a refusal must not cost the connection"
    assert [(m.mail_from, m.rcpt_tos) for m in arrived] == [(sender, (ALICE,)), (sender, (CAROL,)), (sender, (CAROL,))]
    assert [m.raw for m in arrived[:2]] == [first, second], "the bytes on the wire are the outbox's bytes"
    assert f"SIZE={len(second)}" in arrived[1].mail_options
    assert arrived[2].raw.count(b"\n") == arrived[2].raw.count(b"\r\n"), "bare line ends go out as CRLF"


# -- claims -----------------------------------------------------------------------------------------------------


async def test_two_concurrent_drainers_never_send_a_row_twice(settings: Settings, make_deps: DepsFactory) -> None:
    async with SmtpSink() as sink:
        settings = smtp_settings(settings, sink, batch_size=5, concurrency=3)
        deps_a, deps_b = await make_deps(settings), await make_deps(settings)
        users = await add_users(deps_a, ALICE, BOB, CAROL)
        ids = await enqueue_rows(deps_a, [(a, users[a]) for a in (ALICE, BOB, CAROL)] * 10)
        mailers = [build_mailer(settings), build_mailer(settings)]
        claimed: dict[str, int] = {"a": 0, "b": 0}

        async def drain_until_empty(deps: Deps, mailer: Any, worker: str) -> None:
            while (stats := await drain_once(deps, mailer, worker=worker)).claimed:
                claimed[worker] += stats.claimed

        try:
            await asyncio.gather(drain_until_empty(deps_a, mailers[0], "a"),
                                 drain_until_empty(deps_b, mailers[1], "b"))
        finally:
            for mailer in mailers:
                await mailer.close()
        await sink.wait_for(30)

    assert claimed["a"] + claimed["b"] == 30
    assert claimed["a"] > 0 and claimed["b"] > 0, "both drainers should have taken part"
    counts = deliveries(sink)
    assert len(counts) == 30 and set(counts.values()) == {1}
    assert {mid for mid, _ in counts} == set(ids)
    assert {r.claimed_by for r in await rows(deps_a)} == {"a", "b"}


async def test_a_drain_that_keeps_going_claims_each_next_batch_before_the_slots_run_dry(
    settings: Settings, make_deps: DepsFactory, tmp_path: Path
) -> None:
    """With keep_going a full batch is followed, in the same drain, by the next (claimed while the last rows of the
    one before are on the wire): every row is sent once, a refusal among them is still recorded, and the journal
    is empty at the end; once keep_going says no, the drain ends with the batch in hand."""
    async with SmtpSink() as sink:
        settings = smtp_settings(settings, sink, batch_size=5, concurrency=2)
        deps = await make_deps(settings)
        users = await add_users(deps, ALICE, BOB, CAROL)
        ids = await enqueue_rows(deps, [(a, users[a]) for a in (ALICE, BOB, CAROL)] * 9)  # 27 rows
        sink.fail_with(550, "5.1.1 No such user", only={BOB})
        journal = SentJournal.open(tmp_path / "sent.journal")
        assert journal is not None
        mailer = build_mailer(settings)
        batches_left = iter([True, False])  # asked once the tail of each full batch is on its way
        try:
            first = await drain_once(deps, mailer, worker="w", journal=journal, keep_going=lambda: next(batches_left))
            rest = await drain_once(deps, mailer, worker="w", journal=journal, keep_going=lambda: True)
            assert await drain_once(deps, mailer, worker="w", journal=journal, keep_going=lambda: True) == DrainStats()
        finally:
            await mailer.close()
            journal.close()
        await sink.wait_for(18)
    assert first == DrainStats(claimed=10, sent=7, failed=3)  # two batches, the second ended the drain
    assert rest == DrainStats(claimed=17, sent=11, failed=6)  # four batches in one drain, the last not full
    counts = deliveries(sink)
    assert len(counts) == 18 and set(counts.values()) == {1}
    assert {mid for mid, _ in counts} == set(ids[0::3] + ids[2::3])  # Alice's and Carol's, never Bob's
    assert Counter(r.status for r in await rows(deps)) == Counter({OutboxStatus.SENT: 18, OutboxStatus.FAILED: 9})
    assert (tmp_path / "sent.journal").read_bytes() == b""


async def test_claimed_rows_are_skipped_by_a_second_worker_until_the_claim_expires(
    settings: Settings, make_deps: DepsFactory
) -> None:
    clock = Clock()
    deps = await make_deps(settings, clock)
    await enqueue_rows(deps, [(ALICE, None), (BOB, None)])
    async with deps.sessions() as session, session.begin():
        crashed = await claim(session, worker="crashed", now=clock.now, limit=10, lease_seconds=300)
    assert [r.recipient for r in crashed] == [ALICE, BOB]
    assert {(r.status, r.claimed_by, r.claimed_until) for r in await rows(deps)} == {
        ("sending", "crashed", T0 + timedelta(seconds=300))}

    mailer = MaildirMailer(settings.outbound.outbox_dir)
    clock.advance(299)
    assert await drain_once(deps, mailer, worker="w2") == DrainStats()
    clock.advance(2)
    assert await drain_once(deps, mailer, worker="w2") == DrainStats(claimed=2, sent=2)
    # The worker that lost its claim cannot overwrite what the new owner recorded.
    async with deps.sessions() as session, session.begin():
        assert await mark_sent(session, [r.id for r in crashed], now=clock.now, worker="crashed") == set()
    assert {(r.status, r.claimed_by, r.attempts) for r in await rows(deps)} == {("sent", "w2", 1)}
    assert len(list((Path(settings.outbound.outbox_dir) / "new").iterdir())) == 2


async def test_postgres_skip_locked_gives_concurrent_claims_disjoint_rows(
    settings: Settings, make_deps: DepsFactory
) -> None:
    if not settings.database.url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time (covered by the drainers test)")
    deps = await make_deps(settings)
    await enqueue_rows(deps, [(f"user{i}@example.org", None) for i in range(6)])
    async with deps.sessions() as first, first.begin():
        mine = await claim(first, worker="a", now=T0, limit=4, lease_seconds=60)
        # The first transaction still holds its row locks: the second worker skips them instead of waiting.
        async with asyncio.timeout(10), deps.sessions() as second, second.begin():
            theirs = await claim(second, worker="b", now=T0, limit=4, lease_seconds=60)
    assert len(mine) == 4 and len(theirs) == 2
    assert not {r.id for r in mine} & {r.id for r in theirs}


# -- bounce scoring ---------------------------------------------------------------------------------------------


async def test_bounce_score_crosses_the_threshold_and_disabled_users_stay_disabled(
    settings: Settings, make_deps: DepsFactory
) -> None:
    settings = dataclasses.replace(settings, limits=LimitsSettings(bounce_score_threshold=2.0, hard_bounce_score=1.0,
                                                                   soft_bounce_score=0.25))
    deps = await make_deps(settings)
    users = await add_users(deps, ALICE)
    async with deps.sessions() as session, session.begin():
        disabled = await queries.add_user(session, email=BOB, status=UserStatus.DISABLED, now=T0)

    async def fail(address: str, user_id: int | None, *, hard: bool) -> None:
        async with deps.sessions() as session, session.begin():
            await record_delivery_failure(session, user_id=user_id, address=address, outbox_id=None,
                                          diagnostic="550 5.1.1 unknown", hard=hard, settings=settings, now=T0)

    await fail(ALICE, users[ALICE], hard=True)
    assert ((await user(deps, users[ALICE])).bounce_score, (await user(deps, users[ALICE])).status) == (1.0, "active")
    await fail(ALICE.upper(), None, hard=False)  # found by address, case-insensitively
    await fail(ALICE, users[ALICE], hard=True)
    alice = await user(deps, users[ALICE])
    assert (alice.bounce_score, alice.status) == (2.25, UserStatus.BOUNCING)
    for _ in range(3):
        await fail(BOB, disabled.id, hard=True)
    assert (await user(deps, disabled.id)).status == UserStatus.DISABLED
    await fail("stranger@example.com", None, hard=True)
    kinds = [(b.user_id, b.kind) for b in await bounces(deps)]
    assert kinds == [(users[ALICE], "hard"), (users[ALICE], "soft"), (users[ALICE], "hard"),
                     (disabled.id, "hard"), (disabled.id, "hard"), (disabled.id, "hard"), (None, "hard")]


# -- the background sender --------------------------------------------------------------------------------------


async def test_sender_drains_when_woken_and_survives_a_failing_drain(
    settings: Settings, make_deps: DepsFactory
) -> None:
    armed = False

    def clock() -> datetime:
        nonlocal armed
        if armed:
            armed = False
            raise RuntimeError("this drain blows up")
        return datetime.now(UTC)

    async with SmtpSink() as sink:
        # A poll interval of an hour: only wake() can make another drain happen within the test.
        settings = smtp_settings(settings, sink, poll_interval=3600.0)
        deps = dataclasses.replace(await make_deps(settings), clock=clock)
        users = await add_users(deps, ALICE)
        await enqueue_rows(deps, [(ALICE, users[ALICE])])
        mailer = build_mailer(settings)
        armed = True
        try:
            async with sending(deps, mailer=mailer, worker="bg") as sender:
                await sender.flush()  # the first drain, which raised
                assert not armed and sink.messages == []
                await sender.flush()
                (message,) = await sink.wait_for(1)
            assert sender.drains >= 2
        finally:
            await mailer.close()
    assert message.rcpt_tos == (ALICE,)
    assert [(r.status, r.claimed_by) for r in await rows(deps)] == [("sent", "bg")]


async def test_sender_with_the_default_maildir_mailer(settings: Settings, make_deps: DepsFactory) -> None:
    deps = dataclasses.replace(await make_deps(settings), clock=lambda: datetime.now(UTC))
    async with sending(deps) as sender:
        await enqueue_rows(deps, [(ALICE, None), (BOB, None)])
        await sender.flush()
    assert len(list((Path(settings.outbound.outbox_dir) / "new").iterdir())) == 2
    assert {r.status for r in await rows(deps)} == {"sent"}


class GateMailer:
    """Holds every send until released, to catch the sender with work in flight."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
        self.entered.set()
        await self.release.wait()
        self.sent.append(recipient)

    async def close(self) -> None:
        return None


async def test_leaving_the_sender_finishes_in_flight_sends_and_records_them(
    settings: Settings, make_deps: DepsFactory
) -> None:
    deps = dataclasses.replace(await make_deps(settings), clock=lambda: datetime.now(UTC))
    await enqueue_rows(deps, [(ALICE, None)])
    gate = GateMailer()
    async with sending(deps, mailer=gate, worker="bg") as sender:
        await gate.entered.wait()
        asyncio.get_running_loop().call_soon(gate.release.set)  # runs while the exit waits for the batch
    assert sender.drains == 1
    assert gate.sent == [ALICE]
    assert [(r.status, r.claimed_by) for r in await rows(deps)] == [("sent", "bg")]


async def test_a_sender_stuck_past_the_grace_period_is_cancelled_and_its_rows_come_back(
    settings: Settings, make_deps: DepsFactory
) -> None:
    clock = Clock()
    deps = await make_deps(settings, clock)
    await enqueue_rows(deps, [(ALICE, None)])
    gate = GateMailer()
    async with sending(deps, mailer=gate, worker="stuck", stop_timeout=0.05):
        await gate.entered.wait()
    (row,) = await rows(deps)
    assert (row.status, row.claimed_by) == ("sending", "stuck")
    assert row.claimed_until is not None
    clock.now = row.claimed_until + timedelta(seconds=1)
    assert await drain_once(deps, MaildirMailer(settings.outbound.outbox_dir), worker="next") == DrainStats(
        claimed=1, sent=1)


# -- the command line -------------------------------------------------------------------------------------------


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="qaflow-mail")
    outbox_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_outbox_command_lists_and_retries(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    async def seed() -> None:
        engine = create_engine(settings.database.url)
        deps = Deps.build(settings, session_factory(engine), clock=Clock())
        try:
            await enqueue_rows(deps, [(ALICE, None), (BOB, None), (CAROL, None)])
            async with deps.sessions() as session, session.begin():
                await claim(session, worker="w", now=T0, limit=2, lease_seconds=60)
                claimed = list((await session.scalars(select(Outbox).order_by(Outbox.id))).all())[:2]
                await mark_sent(session, [claimed[0].id], now=T0, worker="w")
                await mark_failed(session, [(claimed[1], "550 5.1.1 no such user")], now=T0, settings=settings,
                                  worker="w")
        finally:
            await engine.dispose()

    asyncio.run(seed())

    args = cli("outbox", "--json")
    assert args.func(settings, args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["recipient"], r["status"]) for r in listed] == [
        (3, CAROL, "pending"), (2, BOB, "failed"), (1, ALICE, "sent")]
    assert listed[1]["last_error"] == "550 5.1.1 no such user"
    assert listed[1]["attempts"] == 1
    assert listed[2]["sent_at"] == T0.isoformat()
    assert set(listed[0]) == {"id", "kind", "recipient", "status", "attempts", "next_attempt_at", "last_error",
                              "created_at", "sent_at"}

    args = cli("outbox", "--status", "failed", "--json")
    assert args.func(settings, args) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [2]

    args = cli("outbox", "--limit", "1")
    assert args.func(settings, args) == 0
    text = capsys.readouterr().out
    assert text.count("\n") == 1 and CAROL in text

    args = cli("outbox", "retry", "2")
    assert args.func(settings, args) == 0
    assert "requeued" in capsys.readouterr().out
    args = cli("outbox", "--status", "pending", "--json")
    args.func(settings, args)
    pending = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["attempts"]) for r in pending] == [(3, 0), (2, 0)]

    for row_id, reason in ((1, "sent already"), (99, "no outbox row 99")):
        args = cli("outbox", "retry", str(row_id))
        with pytest.raises(CommandError, match=reason):
            args.func(settings, args)
