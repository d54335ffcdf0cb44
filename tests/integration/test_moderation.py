"""The moderation queue end to end: a stranger's first post waits, moderators decide by mail, held posts stay
unmailed until approved; our MTA's spam verdict holds, a sender's own spam header does not."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import CategorySubscription, HeldPost, Post, PostStatus, SubscriptionMode
from qaflow_mail.server.app import Running
from qaflow_mail.services import moderation
from tests.fanout import by_recipient, delivered
from tests.sink import SinkMessage, SmtpSink
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
OPEN = f"open@{DOMAIN}"
ADMIN, BOB, STRANGER = "admin@example.org", "bob@example.net", "stranger@example.biz"
MTA = "mx.forum.test"


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    return dataclasses.replace(
        settings,
        announce=dataclasses.replace(settings.announce, trusted_authserv_id=MTA),
        outbound=dataclasses.replace(settings.outbound, **sink.as_relay()),
    )


@pytest.fixture
async def forum(gateway: Running) -> Running:
    now = datetime.now(UTC)
    async with gateway.deps.sessions() as session, session.begin():
        category = await queries.add_category(session, slug="open", name="Open", allow_strangers=True)
        await queries.add_user(session, email=ADMIN, display_name="Admin", is_admin=True, now=now)
        bob = await queries.add_user(session, email=BOB, display_name="Bob", now=now)
        session.add(CategorySubscription(user_id=bob.id, category_id=category.id, mode=SubscriptionMode.EACH))
    await gateway.deps.categories.reload()
    return gateway


async def deliver(run: Running, sink: SmtpSink, expected: int) -> dict[str, SinkMessage]:
    return by_recipient(await delivered(run.deps, sink, expected))


async def status_of(run: Running, message_id: str) -> str:
    async with run.deps.sessions() as session:
        post = await session.scalar(select(Post).where(Post.message_id == message_id))
    assert post is not None
    return post.status


async def test_a_strangers_first_post_waits_and_is_published_on_approve(forum: Running, sink: SmtpSink) -> None:
    first = make_mail(sender=STRANGER, to=OPEN, subject="Hello", body="My first question", message_id="<s1@biz>")
    assert (await send(forum.smtp_port, first, mail_from=STRANGER, rcpt_tos=[OPEN])).data_code == 250
    assert await status_of(forum, "s1@biz") == PostStatus.HELD
    # The moderator gets the text; the author is told once; Bob (a follower) gets nothing yet.
    held = await deliver(forum, sink, 2)
    assert set(held) == {ADMIN, STRANGER}
    to_admin = held[ADMIN].parsed()
    assert "My first question" in to_admin.get_body(("plain",)).get_content()
    assert "awaits a moderator" in str(held[STRANGER].parsed()["Subject"])

    # Someone else replying to the moderation address decides nothing.
    moderate_at = to_admin["Reply-To"].addresses[0].addr_spec
    forged = make_mail(sender=BOB, to=moderate_at, subject="Re: held", body="approve")
    assert (await send(forum.smtp_port, forged, mail_from=BOB, rcpt_tos=[moderate_at])).data_code == 550
    assert await status_of(forum, "s1@biz") == PostStatus.HELD

    approve = make_mail(sender=ADMIN, to=moderate_at, subject="Re: held", body="Approve\n\n> quoted stuff")
    assert (await send(forum.smtp_port, approve, mail_from=ADMIN, rcpt_tos=[moderate_at])).data_code == 250
    assert await status_of(forum, "s1@biz") == PostStatus.PUBLISHED
    published = await deliver(forum, sink, 2)  # Bob's notification, and the author's "published"
    assert set(published) == {BOB, STRANGER}
    assert "My first question" in published[BOB].parsed().get_body(("plain",)).get_content()

    # The stranger's second post goes straight out.
    second = make_mail(sender=STRANGER, to=OPEN, subject="Again", body="Second one", message_id="<s2@biz>")
    assert (await send(forum.smtp_port, second, mail_from=STRANGER, rcpt_tos=[OPEN])).data_code == 250
    assert await status_of(forum, "s2@biz") == PostStatus.PUBLISHED


async def test_reject_keeps_the_post_recorded_and_never_mailed(forum: Running, sink: SmtpSink) -> None:
    first = make_mail(sender=STRANGER, to=OPEN, subject="Buy", body="cheap pills", message_id="<s3@biz>")
    assert (await send(forum.smtp_port, first, mail_from=STRANGER, rcpt_tos=[OPEN])).data_code == 250
    await deliver(forum, sink, 2)
    async with forum.deps.sessions() as session:
        [summary] = await moderation.pending(session)
    async with forum.deps.sessions() as session, session.begin():
        decided = await moderation.decide(session, forum.deps, post_id=summary.post_id,
                                          decision=moderation.ModerationDecision.REJECTED, moderator=None,
                                          reason="spam", now=datetime.now(UTC))
    assert not isinstance(decided, moderation.Refusal)
    told = await deliver(forum, sink, 1)
    assert set(told) == {STRANGER}
    assert "spam" in told[STRANGER].parsed().get_body(("plain",)).get_content()
    assert await status_of(forum, "s3@biz") == PostStatus.REJECTED
    async with forum.deps.sessions() as session:
        assert await moderation.pending(session) == []
        held = await session.scalar(select(HeldPost))
    assert held is not None and held.rejection_reason == "spam"


async def test_our_mtas_spam_verdict_holds_and_a_senders_own_does_not(forum: Running, sink: SmtpSink) -> None:
    def raw(message_id: str, *, ours: bool) -> bytes:
        body = make_mail(sender=BOB, to=OPEN, subject="Hi", body="hello", message_id=message_id).as_bytes()
        trusted = f"Authentication-Results: {MTA}; spf=pass smtp.mailfrom=example.net\r\n".encode()
        received = b"Received: from client.example.net by mx.forum.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        spam = b"X-Spam-Flag: YES\r\n"
        return (spam + trusted + received + body) if ours else (trusted + received + spam + body)

    sent = await send(forum.smtp_port, raw("<spam-theirs@net>", ours=False), mail_from=BOB, rcpt_tos=[OPEN])
    assert sent.data_code == 250
    assert await status_of(forum, "spam-theirs@net") == PostStatus.PUBLISHED
    sent = await send(forum.smtp_port, raw("<spam-ours@net>", ours=True), mail_from=BOB, rcpt_tos=[OPEN])
    assert sent.data_code == 250
    assert await status_of(forum, "spam-ours@net") == PostStatus.HELD
