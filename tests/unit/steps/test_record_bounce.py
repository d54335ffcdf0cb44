"""record_bounce: a bounce on our VERP address bounces+<token>@ scores against the user its token names; a bad
token, a gone user or mail that is no bounce is discarded with 250, never answered."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import BounceRecord as BounceRow
from qaflow_mail.db.models import Category, Disposition, Outbox, OutboxKind, User
from qaflow_mail.mail.addresses import Bounce
from qaflow_mail.mail.tokens import TokenKind
from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.pipeline.steps.record_bounce import record_bounce
from qaflow_mail.replies import OK
from tests.unit.steps.conftest import DOMAIN, NOW, SECRET, MakeContext, add_post, token


def dsn(*, failed: str, status: str = "5.1.1", action: str = "failed") -> bytes:
    """A Postfix-style RFC 3464 delivery report for a notification we sent to `failed`."""
    text = f"""\
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: bounces@{DOMAIN}
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-1@mx.example.net>
Date: Mon, 2 Jun 2025 09:15:02 +0000
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b-1"

--b-1
Content-Type: text/plain; charset=us-ascii

<{failed}>: host mx.example.org said: 550 5.1.1 User unknown

--b-1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {failed}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 {status} <{failed}>: Recipient address rejected: User unknown

--b-1
Content-Type: text/rfc822-headers

From: notifications@{DOMAIN}
To: {failed}
Subject: [QAFlow Test] Hello
Message-ID: <post-1.abc@{DOMAIN}>

--b-1--
"""
    return text.replace("\n", "\r\n").encode()


def bounce_context(make_context: MakeContext, raw: bytes, verp_token: str, *, envelope_from: str = "") -> Context:
    return make_context(raw, destination=Bounce(verp_token), envelope_from=envelope_from,
                        recipient=f"bounces+{verp_token}@{DOMAIN}")


def assert_discarded(result: Context | Outcome, reason: str) -> None:
    assert isinstance(result, Outcome), result
    assert result.disposition == Disposition.DISCARDED
    assert result.reply == OK
    assert reason in result.reason, result.reason


async def bounces(session: AsyncSession) -> list[BounceRow]:
    return list((await session.scalars(select(BounceRow).order_by(BounceRow.id))).all())


async def test_a_hard_bounce_is_recorded_against_the_tokens_user(
    make_context: MakeContext, session: AsyncSession, bob: User
) -> None:
    ctx = bounce_context(make_context, dsn(failed=bob.email), token(TokenKind.BOUNCE, bob.id, 0))

    result = await record_bounce(ctx)

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.ACCEPTED
    assert result.reason == f"bounce: hard for user {bob.id}"
    rows = await bounces(session)
    assert [(b.user_id, b.address, b.kind) for b in rows] == [(bob.id, bob.email, "hard")]
    await session.refresh(bob)
    assert bob.bounce_score > 0


async def test_a_bounce_finds_the_notification_it_answers(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    post = await add_post(session, author=alice, category=general, message_id="msg-1@example.org")
    sent = Outbox(kind=OutboxKind.NOTIFICATION.value, dedupe_key="n:1", message_id=f"post-1.abc@{DOMAIN}",
                  envelope_from=f"bounces@{DOMAIN}", recipient=bob.email, user_id=bob.id, post_id=post.id, raw=b"",
                  created_at=NOW, next_attempt_at=NOW)
    session.add(sent)
    await session.flush()
    ctx = bounce_context(make_context, dsn(failed=bob.email), token(TokenKind.BOUNCE, bob.id, post.id))

    result = await record_bounce(ctx)

    assert isinstance(result, Outcome) and result.disposition == Disposition.ACCEPTED
    assert [b.outbox_id for b in await bounces(session)] == [sent.id]


async def test_a_delay_report_is_recorded_as_soft(make_context: MakeContext, session: AsyncSession,
                                                  bob: User) -> None:
    raw = dsn(failed=bob.email, status="4.2.2", action="delayed")
    ctx = bounce_context(make_context, raw, token(TokenKind.BOUNCE, bob.id, 0))

    result = await record_bounce(ctx)

    assert isinstance(result, Outcome) and result.disposition == Disposition.ACCEPTED
    assert result.reason == f"bounce: soft for user {bob.id}"
    assert [b.kind for b in await bounces(session)] == ["soft"]


async def test_a_bad_token_is_discarded(make_context: MakeContext, session: AsyncSession, bob: User) -> None:
    forged = token(TokenKind.BOUNCE, bob.id, 0, secret=SECRET + "-guessed")

    assert_discarded(await record_bounce(bounce_context(make_context, dsn(failed=bob.email), forged)),
                     "invalid or expired token")
    assert await bounces(session) == []


async def test_a_token_of_another_kind_is_discarded(make_context: MakeContext, session: AsyncSession,
                                                    bob: User) -> None:
    reply_token = token(TokenKind.REPLY, bob.id, 0)

    assert_discarded(await record_bounce(bounce_context(make_context, dsn(failed=bob.email), reply_token)),
                     "invalid or expired token")
    assert await bounces(session) == []


async def test_a_token_for_a_user_who_is_gone_is_discarded(make_context: MakeContext, session: AsyncSession) -> None:
    ctx = bounce_context(make_context, dsn(failed="gone@example.net"), token(TokenKind.BOUNCE, 999, 0))

    assert_discarded(await record_bounce(ctx), "no user 999")
    assert await bounces(session) == []


async def test_a_vacation_notice_on_the_bounce_address_is_no_bounce(
    make_context: MakeContext, session: AsyncSession, bob: User
) -> None:
    vacation = {"From": f"Bob <{bob.email}>", "Subject": "Out of office", "Auto-Submitted": "auto-replied",
                "Message-ID": "<vacation-1@example.net>"}
    ctx = make_context(vacation, body="I am away until Monday.\n",
                       destination=Bounce(token(TokenKind.BOUNCE, bob.id, 0)), envelope_from="")

    assert_discarded(await record_bounce(ctx), "not a bounce")
    assert await bounces(session) == []
