"""Bounces arriving over loopback SMTP: on our VERP address they are recorded against the user the token names (a
hard bounce scores, enough of them stop delivery, a soft one only counts); anywhere else, and with a bad token,
they are discarded, and nothing automatic is ever posted."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    BounceRecord,
    CategorySubscription,
    Disposition,
    InboundMessage,
    Outbox,
    OutboxKind,
    Post,
    SubscriptionMode,
    User,
    UserStatus,
)
from qaflow_mail.mail.addresses import token_address
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.server.app import Running
from tests.fanout import fanout_done
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, BOB = "alice@example.org", "bob@example.net"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Two hard bounces stop delivery (the default threshold is 5)."""
    return dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, bounce_score_threshold=2.0))


@pytest.fixture
async def forum(gateway: Running) -> Running:
    async with gateway.deps.sessions() as session, session.begin():
        now = datetime.now(UTC)
        general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        alice = await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
        await queries.add_user(session, email=BOB, display_name="Bob", now=now)
        session.add(CategorySubscription(user_id=alice.id, category_id=general.id, mode=SubscriptionMode.EACH))
    return gateway


def dsn(*, to: str, failed: str, action: str, status: str, message_id: str) -> bytes:
    """A Postfix-style RFC 3464 delivery report for a notification we sent to `failed`."""
    diagnostic = "550 5.1.1 <{0}>: Recipient address rejected: User unknown" if status.startswith("5") else (
        "450 4.2.2 <{0}>: Mailbox full, try again later")
    text = f"""\
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {to}
Subject: {"Undelivered Mail Returned to Sender" if status.startswith("5") else "Delayed Mail (still being retried)"}
Message-ID: <{message_id}>
Date: Mon, 4 Mar 2024 09:15:02 +0000
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b-1"

--b-1
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.

<{failed}>: host mx.example.org[192.0.2.7] said: {diagnostic.format(failed)}

--b-1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Mon, 4 Mar 2024 09:14:58 +0000

Final-Recipient: rfc822; {failed}
Original-Recipient: rfc822;{failed}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; {diagnostic.format(failed)}

--b-1
Content-Type: text/rfc822-headers

From: "Bob via QAFlow Test" <notifications@{DOMAIN}>
To: {failed}
Subject: [QAFlow Test] Hello
Message-ID: <post-1.abc@{DOMAIN}>

--b-1--
"""
    return text.replace("\n", "\r\n").encode()


def hard(to: str, failed: str, n: int = 1) -> bytes:
    return dsn(to=to, failed=failed, action="failed", status="5.1.1", message_id=f"hard-{n}@mx.example.net")


def soft(to: str, failed: str) -> bytes:
    return dsn(to=to, failed=failed, action="delayed", status="4.2.2", message_id="soft-1@mx.example.net")


async def user(run: Running, email: str) -> User:
    async with run.deps.sessions() as session:
        found = await queries.user_by_email(session, email)
    assert found is not None
    return found


def verp_for(run: Running, user_id: int, ref_id: int = 0) -> str:
    token = sign(TokenKind.BOUNCE, (user_id, ref_id), secret=run.deps.settings.tokens.secret,
                 issued=datetime.now(UTC).date())
    return token_address(TokenKind.BOUNCE, token, domain=DOMAIN)


async def bounces(run: Running) -> list[BounceRecord]:
    async with run.deps.sessions() as session:
        return list((await session.scalars(select(BounceRecord).order_by(BounceRecord.id))).all())


async def post_count(run: Running) -> int:
    async with run.deps.sessions() as session:
        return int(await session.scalar(select(func.count(Post.id))) or 0)


async def deliver(run: Running, raw: bytes, rcpt: str, *, mail_from: str = "") -> None:
    conv = await send(run.smtp_port, raw, mail_from=mail_from, rcpt_tos=[rcpt])
    assert conv.rcpts[rcpt][0] == 250
    assert conv.data_code == 250


async def test_hard_bounce_of_a_notification_is_recorded_against_its_outbox_row(forum: Running) -> None:
    post = make_mail(sender=BOB, to=GENERAL, subject="Hello", body="Hello everyone.")
    assert (await send(forum.smtp_port, post, mail_from=BOB, rcpt_tos=[GENERAL])).data_code == 250
    await fanout_done(forum.deps)
    async with forum.deps.sessions() as session:
        row = (await session.scalars(select(Outbox).where(Outbox.kind == OutboxKind.NOTIFICATION))).one()
    assert row.recipient == ALICE
    verp = row.envelope_from  # the VERP address the notification was sent from: where its bounce comes back

    await deliver(forum, hard(verp, ALICE), verp)

    (recorded,) = await bounces(forum)
    alice = await user(forum, ALICE)
    assert (recorded.user_id, recorded.kind, recorded.address, recorded.outbox_id) == (alice.id, "hard", ALICE, row.id)
    assert "5.1.1" in recorded.diagnostic
    assert alice.bounce_score == 1.0
    assert alice.status == UserStatus.ACTIVE
    assert await post_count(forum) == 1  # only Bob's post: the bounce is not one


async def test_hard_bounces_past_the_threshold_stop_delivery(forum: Running) -> None:
    alice = await user(forum, ALICE)
    verp = verp_for(forum, alice.id)
    await deliver(forum, hard(verp, ALICE, 1), verp)
    await deliver(forum, hard(verp, ALICE, 1), verp)  # the same report again (an MTA retry): counted once
    assert (await user(forum, ALICE)).status == UserStatus.ACTIVE
    await deliver(forum, hard(verp, "alice.forward@elsewhere.example", 2), verp)  # forwarded: the token decides
    alice = await user(forum, ALICE)
    assert alice.bounce_score == 2.0
    assert alice.status == UserStatus.BOUNCING
    assert [(b.kind, b.address) for b in await bounces(forum)] == [
        ("hard", ALICE), ("hard", "alice.forward@elsewhere.example")]
    assert (await user(forum, BOB)).bounce_score == 0.0


async def test_soft_bounce_only_counts(forum: Running) -> None:
    alice = await user(forum, ALICE)
    verp = verp_for(forum, alice.id)
    await deliver(forum, soft(verp, ALICE), verp)
    (recorded,) = await bounces(forum)
    assert (recorded.user_id, recorded.kind, recorded.outbox_id) == (alice.id, "soft", None)
    alice = await user(forum, ALICE)
    assert alice.bounce_score == 0.0
    assert alice.status == UserStatus.ACTIVE


async def test_bounce_to_a_category_address_is_discarded(forum: Running) -> None:
    await deliver(forum, hard(GENERAL, ALICE), GENERAL)
    assert await post_count(forum) == 0
    assert await bounces(forum) == []
    async with forum.deps.sessions() as session:
        record = (await session.scalars(select(InboundMessage))).one()
    assert record.disposition == Disposition.DISCARDED
    assert "bounce" in record.reason


@pytest.mark.parametrize("local", ["bounces+garbage", "bounces+aaaaaaaaaaaaaaaaaaaaaaaaaa"])
async def test_bad_token_is_discarded_never_answered(forum: Running, local: str) -> None:
    rcpt = f"{local}@{DOMAIN}"
    await deliver(forum, hard(rcpt, ALICE), rcpt)
    assert await bounces(forum) == []
    async with forum.deps.sessions() as session:
        record = (await session.scalars(select(InboundMessage))).one()
        outbox = (await session.scalars(select(Outbox))).all()
    assert record.disposition == Disposition.DISCARDED
    assert "token" in record.reason
    assert outbox == []


async def test_reply_token_on_the_bounce_address_is_refused(forum: Running) -> None:
    alice = await user(forum, ALICE)
    token = sign(TokenKind.REPLY, (1, alice.id), secret=forum.deps.settings.tokens.secret,
                 issued=datetime.now(UTC).date())
    rcpt = f"bounces+{token}@{DOMAIN}"
    await deliver(forum, hard(rcpt, ALICE), rcpt)
    assert await bounces(forum) == []


async def test_vacation_reply_to_the_verp_address_is_not_a_bounce(forum: Running) -> None:
    alice = await user(forum, ALICE)
    verp = verp_for(forum, alice.id)
    vacation = make_mail(sender=ALICE, to=verp, subject="Out of office: [QAFlow Test] Hello",
                         body=f"I am away until Monday. Mail to {BOB} for urgent matters.",
                         headers={"Auto-Submitted": "auto-replied"})
    await deliver(forum, vacation.as_bytes(), verp, mail_from="")
    assert await bounces(forum) == []
    assert (await user(forum, ALICE)).bounce_score == 0.0
    assert await post_count(forum) == 0
