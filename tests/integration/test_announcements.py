"""Announcements by mail to announce@: DKIM (key and DNS made here), our MTA's Authentication-Results, holding and
confirming by mail (with PUBLISH, text only, exactly what the confirmation showed), forged senders, replays of
signed mail written for someone else, non-admins, and a broadcast to 1,000 users through a real SMTP sink."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from qaflow_mail.cli import build_parser
from qaflow_mail.commands.common import CommandError
from qaflow_mail.config import AnnounceSettings, Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import (
    Announcement,
    Attachment,
    Category,
    InboundMessage,
    Outbox,
    OutboxKind,
    Post,
    Topic,
    User,
    UserAddress,
    UserStatus,
)
from qaflow_mail.deps import Deps
from qaflow_mail.mail.tokens import TokenKind, verify
from qaflow_mail.outbound.announcements import announcement_status
from qaflow_mail.outbound.sender import sending
from qaflow_mail.server.app import Running, running
from qaflow_mail.server.fanout_worker import FanoutWorker
from tests.clock import Clock
from tests.fanout import fanout_done
from tests.sink import SmtpSink
from tests.smtp_client import Conversation, send
from tests.unit.test_dkim_check import dns_for, message, shared_key, sign

ADMIN = "alice@example.org"
SECRET = "test-secret-not-for-production"
ANNOUNCE = "announce@forum.test"


def with_announce(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, announce=dataclasses.replace(AnnounceSettings(), **changes))


async def seed(run: Running, *, users: int = 3, admin_alias: str | None = None) -> None:
    """alice (admin), `users` ordinary active users, one who muted announcements and one disabled user."""
    async with run.deps.sessions() as session, session.begin():
        created = datetime(2025, 1, 1, tzinfo=UTC)
        session.add(User(email=ADMIN, display_name="Alice Admin", is_admin=True, created_at=created))
        await session.execute(insert(User), [
            {"email": f"user{n:04d}@example.net", "display_name": "", "is_admin": False,
             "status": UserStatus.ACTIVE.value, "bounce_score": 0.0, "announcements_muted": False,
             "created_at": created}
            for n in range(users)
        ])
        session.add(User(email="muted@example.net", announcements_muted=True, created_at=created))
        session.add(User(email="gone@example.net", status=UserStatus.DISABLED.value, created_at=created))
        session.add(User(email="mallory@evil.example", created_at=created))
        await session.flush()
        if admin_alias:
            admin_id = await session.scalar(select(User.id).where(User.email == ADMIN))
            assert admin_id is not None
            session.add(UserAddress(user_id=admin_id, email=admin_alias))


@pytest.fixture
async def gateway_for(settings: Settings, clock: Clock) -> AsyncIterator[Any]:
    """A factory: the running gateway for settings derived from the test's settings. DKIM keys are looked up in
    the test's own DNS table; `clock` is the gateway's clock."""
    stack: list[Any] = []
    dns = dns_for({"test._domainkey.example.org": shared_key().public_txt})

    async def start(custom: Settings | None = None) -> Running:
        context = running(custom or settings, clock=clock, dkim_dnsfunc=dns)
        run = await context.__aenter__()
        stack.append(context)
        return run

    yield start
    while stack:
        await stack.pop().__aexit__(None, None, None)


def signed_announcement(*, body: str = "The forum moves tonight.\r\n", sender: str = f"Alice Admin <{ADMIN}>",
                        msgid: str | None = None) -> bytes:
    raw = message(sender=sender, body=body, date=datetime.now(UTC))
    if msgid:
        raw = raw.replace(b"<announce-1@example.org>", f"<{msgid}>".encode())
    return sign(raw, domain="example.org")


async def deliver(run: Running, raw: bytes, *, to: str = ANNOUNCE, mail_from: str = ADMIN) -> Conversation:
    return await send(run.smtp_port, raw, mail_from=mail_from, rcpt_tos=[to])


async def query(run: Running, stmt: Any) -> list[Any]:
    async with run.deps.sessions() as session:
        return list((await session.scalars(stmt)).all())


async def announcements(run: Running) -> list[Announcement]:
    return await query(run, select(Announcement).order_by(Announcement.id))


async def outbox(run: Running, kind: OutboxKind) -> list[Outbox]:
    await fanout_done(run.deps, timeout=20)  # a broadcast is written by the fan-out worker, after the 250
    return await query(run, select(Outbox).where(Outbox.kind == kind.value).order_by(Outbox.id))


def parsed(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def body_of(mail: EmailMessage | bytes, subtype: str = "plain") -> str:
    """The text/<subtype> body of a mail, decoded."""
    part = (parsed(mail) if isinstance(mail, bytes) else mail).get_body((subtype,))
    assert part is not None
    return str(part.get_content())


def confirmation_reply(confirm_mail: Outbox, *, sender: str = ADMIN, body: str = "Publish") -> tuple[
        bytes, str]:
    original = parsed(confirm_mail.raw)
    to = str(original["Reply-To"])
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = to
    reply["Subject"] = "Re: " + str(original["Subject"]).strip()
    reply["Message-ID"] = make_msgid(domain="example.org")
    reply["In-Reply-To"] = str(original["Message-ID"])
    reply.set_content(body + "\n\n> " + "\n> ".join(body_of(original).splitlines()[:3]))
    return reply.as_bytes(), to


async def test_a_valid_dkim_signature_publishes_and_broadcasts_at_once(gateway_for: Any) -> None:
    run = await gateway_for()
    await seed(run)
    conv = await deliver(run, signed_announcement())
    assert conv.data == (250, "2.0.0 Message accepted")

    (row,) = await announcements(run)
    assert (row.status, row.verified_by) == ("published", "dkim")
    assert row.post_id is not None and row.inbound_id is not None
    (post,) = await query(run, select(Post).where(Post.id == row.post_id))
    (category,) = await query(run, select(Category.slug).join(Topic, Topic.category_id == Category.id)
                              .where(Topic.id == post.topic_id))
    assert category == "announcements" and post.message_id == "announce-1@example.org"
    assert "The forum moves tonight." in post.body_text
    (inbound,) = await query(run, select(InboundMessage).where(InboundMessage.id == row.inbound_id))
    assert inbound.message_id == "announce-1@example.org" and inbound.post_id == post.id

    rows = await outbox(run, OutboxKind.ANNOUNCEMENT)
    # Everyone active who has not muted announcements: alice, user0000..user0002, mallory; not muted, not gone.
    assert sorted(r.recipient for r in rows) == sorted(
        [ADMIN, "mallory@evil.example", "user0000@example.net", "user0001@example.net", "user0002@example.net"])
    assert {r.dedupe_key for r in rows} == {f"announce:{row.id}:{r.user_id}" for r in rows}
    assert len({r.message_id for r in rows}) == 1
    first = parsed(rows[1].raw)
    assert first["To"] == rows[1].recipient
    assert first["List-Id"] == '"QAFlow Test announcements" <announcements.forum.test>'
    assert first["List-Post"] == "NO" and first["Reply-To"] is None
    assert first["Subject"].strip() == "[QAFlow Test] Maintenance tonight"
    unsubscribe = str(first["List-Unsubscribe"])
    token = unsubscribe.split("unsubscribe+")[1].split("@")[0]
    today = datetime.now(UTC).date()
    assert verify(token, kind=TokenKind.UNSUBSCRIBE, secrets=[SECRET], today=today,
                  max_age_days=None).ids == (rows[1].user_id, 0)
    assert token in body_of(first)  # the footer link is the recipient's own
    async with run.deps.sessions() as session:
        assert await announcement_status(session, row.id) == {"queued": 5, "sent": 0, "failed": 0}


async def test_authentication_results_of_our_mta_publish(gateway_for: Any, settings: Settings) -> None:
    run = await gateway_for(with_announce(settings, trusted_authserv_id="mx.forum.test"))
    await seed(run)
    raw = message(extra_headers="Authentication-Results: mx.forum.test; dkim=pass header.d=example.org\r\n",
                  date=datetime.now(UTC))
    assert (await deliver(run, raw)).data_code == 250
    (row,) = await announcements(run)
    assert (row.status, row.verified_by) == ("published", "authentication-results")


async def test_a_bad_signature_is_held_until_the_admin_confirms_once(gateway_for: Any) -> None:
    run = await gateway_for()
    await seed(run)
    tampered = signed_announcement().replace(b"moves tonight", b"moves to evil.example tonight")
    assert (await deliver(run, tampered)).data == (250, "2.0.0 Message accepted")

    (row,) = await announcements(run)
    assert row.status == "awaiting_confirmation" and row.post_id is None
    assert await outbox(run, OutboxKind.ANNOUNCEMENT) == []
    assert await query(run, select(Post)) == []
    (inbound,) = await query(run, select(InboundMessage).where(InboundMessage.id == row.inbound_id))
    assert inbound.disposition == "held" and b"evil.example tonight" in inbound.raw

    (confirm,) = await outbox(run, OutboxKind.CONFIRMATION)
    assert confirm.recipient == ADMIN
    mail = parsed(confirm.raw)
    assert str(mail["Reply-To"]).startswith("confirm+")
    text = body_of(mail)
    assert "does not verify" in text and "Maintenance tonight" in text and "reply to this email" in text

    reply, to = confirmation_reply(confirm)
    assert (await deliver(run, reply, to=to)).data_code == 250
    (row,) = await announcements(run)
    assert (row.status, row.verified_by) == ("published", "confirmation") and row.confirmed_at is not None
    (post,) = await query(run, select(Post))
    assert post.message_id == "announce-1@example.org" and "evil.example tonight" in post.body_text
    assert len(await outbox(run, OutboxKind.ANNOUNCEMENT)) == 5

    # The same confirmation mail delivered again is a duplicate; a new confirmation is refused: used once.
    assert (await deliver(run, reply, to=to)).data_code == 250
    again, _ = confirmation_reply(confirm, body="PUBLISH it again!")
    conv = await deliver(run, again, to=to)
    assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.7.1")
    assert "already used" in conv.data[1]
    assert len(await outbox(run, OutboxKind.ANNOUNCEMENT)) == 5
    assert len(await query(run, select(Post))) == 1


async def test_a_forged_from_only_mails_the_real_admin(gateway_for: Any) -> None:
    run = await gateway_for()
    await seed(run, admin_alias="alice.alias@example.org")
    forged = message(sender="Alice <alice.alias@example.org>", body="Send your password to evil.example.\r\n")
    conv = await deliver(run, forged, mail_from="mallory@evil.example")
    assert conv.data_code == 250

    (row,) = await announcements(run)
    assert row.status == "awaiting_confirmation"
    (confirm,) = await outbox(run, OutboxKind.CONFIRMATION)
    assert confirm.recipient == ADMIN  # the registered address, not the From of the forged mail
    assert await outbox(run, OutboxKind.ANNOUNCEMENT) == [] and await query(run, select(Post)) == []

    # The token is useless to anyone else: a confirmation from another address is refused.
    reply, to = confirmation_reply(confirm, sender="mallory@evil.example")
    conv = await deliver(run, reply, to=to, mail_from="mallory@evil.example")
    assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.7.1")
    # A made-up token too.
    conv = await deliver(run, reply, to="confirm+aaaaaaaaaaaaaaaaaaaaaaaa@forum.test", mail_from="mallory@evil.example")
    assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.1.1")
    assert await outbox(run, OutboxKind.ANNOUNCEMENT) == [] and await query(run, select(Post)) == []

    # A flood of forged mail: at most [announce] confirm_rate_per_hour confirmations; the rest held silently.
    for n in range(4):
        raw = forged.replace(b"<announce-1@example.org>", f"<forged-{n}@evil.example>".encode())
        assert (await deliver(run, raw, mail_from="mallory@evil.example")).data_code == 250
    assert len(await outbox(run, OutboxKind.CONFIRMATION)) == 3
    assert [a.status for a in await announcements(run)] == ["awaiting_confirmation"] * 3 + ["held"] * 2
    assert await outbox(run, OutboxKind.ANNOUNCEMENT) == []


def refused_with(conv: Conversation, code: str, text: str) -> bool:
    return conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith(code) and text in conv.data[1]


async def test_a_replayed_signed_mail_is_held_not_published(gateway_for: Any, settings: Settings) -> None:
    """A DKIM-signed private mail of the admin, sent on to announce@ with an unsigned Subject put on top, or a
    signed announcement days old: the signature verifies, yet neither publishes by itself."""
    run = await gateway_for()
    await seed(run)
    private = message(to="mallory@evil.example", body="Mallory, I have banned you; the logs show your IP.\r\n",
                      date=datetime.now(UTC))
    replay = b"Subject: Official: all accounts must re-verify at evil.example\r\n" + sign(private, domain="example.org")
    assert (await deliver(run, replay, mail_from="mallory@evil.example")).data_code == 250
    stale = sign(message(date=datetime.now(UTC) - timedelta(days=4)).replace(b"announce-1", b"stale-1"),
                 domain="example.org")
    assert (await deliver(run, stale, mail_from="mallory@evil.example")).data_code == 250

    assert [(a.status, a.verified_by) for a in await announcements(run)] == [("awaiting_confirmation", "")] * 2
    assert await query(run, select(Post)) == [] and await outbox(run, OutboxKind.ANNOUNCEMENT) == []
    first, second = await outbox(run, OutboxKind.CONFIRMATION)
    assert first.recipient == second.recipient == ADMIN
    assert "repeats a header that must appear once (subject)" in body_of(first.raw)
    assert "more than 72 hours ago" in body_of(second.raw)

    strict = await gateway_for(with_announce(settings, require="dkim"))
    another = b"Subject: Official\r\n" + sign(private.replace(b"announce-1", b"private-2"), domain="example.org")
    assert refused_with(await deliver(strict, another, mail_from="mallory@evil.example"), "5.7.1", "DKIM")
    assert len(await announcements(strict)) == 2  # the same database: nothing added


def forged_alternative() -> bytes:
    """A forged announcement whose text and HTML versions say different things, with an attachment."""
    return (
        f"From: Alice Admin <{ADMIN}>\r\nTo: {ANNOUNCE}\r\nSubject: Maintenance tonight\r\n"
        "Message-ID: <f1@evil.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=MM\r\n\r\n"
        "--MM\r\nContent-Type: multipart/alternative; boundary=BB\r\n\r\n"
        "--BB\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "The forum will be down for maintenance tonight between ten and eleven.\r\n"
        "--BB\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        '<p>Your account expires tonight: log in at <a href="https://evil.example/login">'
        "https://evil.example/login</a> to keep it.</p>\r\n"
        "--BB--\r\n"
        "--MM\r\nContent-Type: application/pdf; name=howto.pdf\r\n"
        "Content-Disposition: attachment; filename=howto.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        "JVBERi0xLjQKJSBub3QgcmVhbGx5Cg==\r\n"
        "--MM--\r\n"
    ).encode()


async def test_a_confirmed_announcement_publishes_only_the_text_it_showed(gateway_for: Any) -> None:
    run = await gateway_for()
    await seed(run)
    assert (await deliver(run, forged_alternative(), mail_from="mallory@evil.example")).data_code == 250
    (confirm,) = await outbox(run, OutboxKind.CONFIRMATION)
    shown = parsed(confirm.raw)
    text = body_of(shown)
    assert "> The forum will be down for maintenance tonight between ten and eleven." in text
    assert "Subject: Maintenance tonight" in text
    assert "not the HTML version of the mail nor its 1 attachment" in text
    assert "PUBLISH" in text and "evil.example" not in text
    html = body_of(shown, "html")
    assert "PUBLISH" in html and "evil.example" not in html

    reply, to = confirmation_reply(confirm)
    assert (await deliver(run, reply, to=to)).data_code == 250
    (post,) = await query(run, select(Post))
    assert post.body_text == "The forum will be down for maintenance tonight between ten and eleven."
    assert post.body_html is None
    assert await query(run, select(Attachment)) == []
    broadcasts = await outbox(run, OutboxKind.ANNOUNCEMENT)
    assert len(broadcasts) == 5
    for row in broadcasts:
        mail = parsed(row.raw)
        for subtype in ("plain", "html"):
            shown_to_users = body_of(mail, subtype)
            assert "between ten and eleven" in shown_to_users
            assert "evil.example/login" not in shown_to_users and "expires tonight" not in shown_to_users


async def test_a_reply_without_publish_confirms_nothing(gateway_for: Any) -> None:
    """An auto-responder at the admin's address that marks nothing as automatic must not publish a forgery."""
    run = await gateway_for()
    await seed(run)
    assert (await deliver(run, message(body="Send your password to evil.example.\r\n"),
                          mail_from="mallory@evil.example")).data_code == 250
    (confirm,) = await outbox(run, OutboxKind.CONFIRMATION)
    out_of_office, to = confirmation_reply(confirm, body="I am out of the office until Monday, 9 June.")
    assert refused_with(await deliver(run, out_of_office, to=to), "5.7.1", "PUBLISH")
    assert [a.status for a in await announcements(run)] == ["awaiting_confirmation"]
    assert await query(run, select(Post)) == [] and await outbox(run, OutboxKind.ANNOUNCEMENT) == []
    # The admin can still confirm, from any client: the word first, above the quote, in any case.
    reply, _ = confirmation_reply(confirm, body="*publish*\n\nAlice")
    assert (await deliver(run, reply, to=to)).data_code == 250
    assert [a.status for a in await announcements(run)] == ["published"]


async def test_a_long_announcement_is_quoted_whole_up_to_200_lines(gateway_for: Any) -> None:
    run = await gateway_for()
    await seed(run)
    body = "".join(f"Point {n} of the new rules.\r\n" for n in range(1, 251))
    assert (await deliver(run, message(body=body))).data_code == 250
    (confirm,) = await outbox(run, OutboxKind.CONFIRMATION)
    text = body_of(confirm.raw)
    assert "> Point 1 of the new rules." in text and "> Point 200 of the new rules." in text
    assert "Point 201 " not in text
    assert "and 50 more lines not shown here, which would be published too" in text
    html = body_of(confirm.raw, "html")
    assert "Point 200 of" in html and "Point 201 " not in html and "50 more lines" in html

    reply, to = confirmation_reply(confirm)
    assert (await deliver(run, reply, to=to)).data_code == 250
    (post,) = await query(run, select(Post))
    assert post.body_text.splitlines() == [f"Point {n} of the new rules." for n in range(1, 251)]


async def test_a_confirmation_is_refused_when_the_held_text_is_not_what_it_showed(gateway_for: Any) -> None:
    run = await gateway_for()
    await seed(run)
    assert (await deliver(run, message())).data_code == 250
    (row,) = await announcements(run)
    async with run.deps.sessions() as session, session.begin():  # as if the kept message read differently now
        await session.execute(update(InboundMessage).where(InboundMessage.id == row.inbound_id).values(
            raw=message(body="Send your password to evil.example.\r\n")))
    (confirm,) = await outbox(run, OutboxKind.CONFIRMATION)
    reply, to = confirmation_reply(confirm)
    assert refused_with(await deliver(run, reply, to=to), "5.7.1", "no longer what the confirmation email showed")
    assert [a.status for a in await announcements(run)] == ["awaiting_confirmation"]
    assert await query(run, select(Post)) == [] and await outbox(run, OutboxKind.ANNOUNCEMENT) == []


async def test_an_expired_confirmation_is_refused(gateway_for: Any, clock: Clock) -> None:
    run = await gateway_for()
    await seed(run)
    assert (await deliver(run, message())).data_code == 250  # unsigned: held
    (confirm,) = await outbox(run, OutboxKind.CONFIRMATION)
    real_now = datetime.now(UTC)
    clock.now = real_now + timedelta(hours=48, minutes=1)
    reply, to = confirmation_reply(confirm)
    conv = await deliver(run, reply, to=to)
    assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.1.1")
    assert "expired" in conv.data[1]
    assert [a.status for a in await announcements(run)] == ["awaiting_confirmation"]


async def test_a_non_admin_is_refused(gateway_for: Any) -> None:
    run = await gateway_for()
    await seed(run)
    raw = message(sender="user0001@example.net")
    conv = await deliver(run, raw, mail_from="user0001@example.net")
    assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.7.1")
    conv = await deliver(run, message(sender="nobody@example.com").replace(b"announce-1", b"announce-2"),
                         mail_from="nobody@example.com")
    assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.7.1")
    assert await announcements(run) == [] and await outbox(run, OutboxKind.CONFIRMATION) == []


async def test_require_dkim_refuses_and_require_confirm_always_holds(gateway_for: Any, settings: Settings) -> None:
    strict = await gateway_for(with_announce(settings, require="dkim"))
    await seed(strict)
    conv = await deliver(strict, message())
    assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.7.1")
    assert await announcements(strict) == []
    assert (await deliver(strict, signed_announcement(msgid="signed@example.org"))).data_code == 250
    assert [a.status for a in await announcements(strict)] == ["published"]


async def test_require_confirm_holds_even_a_signed_announcement(gateway_for: Any, settings: Settings) -> None:
    run = await gateway_for(with_announce(settings, require="confirm"))
    await seed(run)
    assert (await deliver(run, signed_announcement())).data_code == 250
    assert [a.status for a in await announcements(run)] == ["awaiting_confirmation"]
    assert len(await outbox(run, OutboxKind.CONFIRMATION)) == 1


async def test_a_broadcast_to_1000_users_reaches_the_sink(gateway_for: Any, settings: Settings) -> None:
    async with SmtpSink() as sink:
        custom = dataclasses.replace(settings, outbound=dataclasses.replace(
            settings.outbound, transport="smtp", smtp_host="127.0.0.1", smtp_port=sink.port, poll_interval=0.05,
            batch_size=500, concurrency=8))
        run = await gateway_for(custom)
        await seed(run, users=998)  # + alice + mallory = 1,000 recipients; the muted and the disabled get none
        started = time.perf_counter()
        assert (await deliver(run, signed_announcement())).data_code == 250
        await fanout_done(run.deps, timeout=30)
        enqueued = time.perf_counter()
        async with sending(run.deps) as sender:
            sender.wake()
            delivered = await sink.wait_for(1000, timeout=60)
        done = time.perf_counter()
        recipients = [rcpt for m in delivered for rcpt in m.rcpt_tos]
        assert len(recipients) == 1000 and len(set(recipients)) == 1000
        assert "muted@example.net" not in recipients and "gone@example.net" not in recipients
        (row,) = await announcements(run)
        async with run.deps.sessions() as session:
            assert await announcement_status(session, row.id) == {"queued": 0, "sent": 1000, "failed": 0}
            assert await session.scalar(select(func.count(Outbox.id))) == 1000
        print(f"\nbroadcast to 1000 ({custom.database.url.split(':')[0]}): accepted+enqueued "
              f"{enqueued - started:.2f}s, delivered {done - enqueued:.2f}s, total {done - started:.2f}s")


def _cli(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_announce_send_and_status_from_the_command_line(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed_users() -> None:
        engine = create_engine(settings.database.url)
        async with session_factory(engine)() as session, session.begin():
            session.add_all([User(email=ADMIN, is_admin=True), User(email="bob@example.net"),
                             User(email="carol@example.net", announcements_muted=True)])
        await engine.dispose()

    asyncio.run(seed_users())
    body = tmp_path / "body.txt"
    body.write_text("Tonight the forum moves to a new server.\n\nIt will be back by 23:00.\n", encoding="utf-8")

    args = _cli("announce", "send", "--from", ADMIN, "--subject", "Maintenance", "--body-file", str(body), "--json")
    assert args.func(settings, args) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["recipients"] == 2  # alice and bob; carol muted announcements

    args = _cli("announce", "status", str(sent["id"]), "--json")
    assert args.func(settings, args) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["status"], status["verified_by"]) == ("published", "cli")
    # No gateway runs: the broadcast's fan-out job waits for one, and the status says so.
    assert (status["queued"], status["sent"], status["failed"]) == (0, 0, 0)
    assert status["fanout"] == {"written": 0, "finished": False, "error": None}

    async def expand() -> None:
        engine = create_engine(settings.database.url)
        try:
            await FanoutWorker(Deps.build(settings, session_factory(engine)), worker="test").run_once()
        finally:
            await engine.dispose()

    asyncio.run(expand())
    args = _cli("announce", "status", str(sent["id"]), "--json")
    assert args.func(settings, args) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["queued"], status["sent"], status["failed"]) == (2, 0, 0)
    assert status["fanout"] == {"written": 2, "finished": True, "error": None}

    args = _cli("announce", "send", "--from", "bob@example.net", "--subject", "Hi", "--body-file", str(body))
    with pytest.raises(CommandError, match="not an active admin"):
        args.func(settings, args)
    with pytest.raises(CommandError, match="no announcement 999"):
        args = _cli("announce", "status", "999")
        args.func(settings, args)
