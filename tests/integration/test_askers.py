"""Askers hear back, threaded under the mail they sent; and an interleaved reply stores no token or footer line."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import CategorySubscription, Post, SubscriptionMode
from qaflow_mail.server.app import Running
from tests.fanout import by_recipient, delivered
from tests.sink import SinkMessage, SmtpSink
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, BOB, CAROL = "alice@example.org", "bob@example.net", "carol@example.com"
TOKEN_RE = re.compile(r"(?:reply|unsubscribe|bounces|confirm|moderate)\+[a-z2-7]+@|/unsubscribe/[a-z2-7]{16,}")


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, base_url="https://forum.test"),
        outbound=dataclasses.replace(settings.outbound, **sink.as_relay()),
    )


@pytest.fixture
async def forum(gateway: Running) -> Running:
    """Alice is subscribed to nothing; Bob and Carol follow General post by post."""
    now = datetime.now(UTC)
    async with gateway.deps.sessions() as session, session.begin():
        general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
        for address in (BOB, CAROL):
            user = await queries.add_user(session, email=address, display_name=address.split("@")[0], now=now)
            session.add(CategorySubscription(user_id=user.id, category_id=general.id, mode=SubscriptionMode.EACH))
    await gateway.deps.categories.reload()
    return gateway


async def deliver(run: Running, sink: SmtpSink, expected: int) -> dict[str, SinkMessage]:
    return by_recipient(await delivered(run.deps, sink, expected))


async def post(run: Running, raw: bytes | object, *, sender: str, rcpt: str) -> None:
    conv = await send(run.smtp_port, raw, mail_from=sender, rcpt_tos=[rcpt])  # type: ignore[arg-type]
    assert conv.data_code == 250, conv


async def test_an_asker_subscribed_to_nothing_gets_the_answer_threaded_under_their_own_mail(
    forum: Running, sink: SmtpSink
) -> None:
    question = make_mail(sender=f"Alice <{ALICE}>", to=GENERAL, subject="How do I reset my password?",
                         body="I forgot it.", message_id="<alice-q1@example.org>")
    await post(forum, question, sender=ALICE, rcpt=GENERAL)
    to_bob = (await deliver(forum, sink, 2))[BOB].parsed()  # Bob and Carol; not Alice, its author

    answer = make_mail(sender=f"Bob <{BOB}>", to=str(to_bob["Reply-To"]), subject=f"Re: {to_bob['Subject']}",
                       body="Use the link on the login page.", message_id="<bob-a1@example.net>")
    await post(forum, answer, sender=BOB, rcpt=to_bob["Reply-To"].addresses[0].addr_spec)
    delivered = await deliver(forum, sink, 2)  # Carol (each) and Alice (the asker): one copy each
    assert set(delivered) == {ALICE, CAROL}
    to_alice = delivered[ALICE].parsed()
    assert str(to_alice["In-Reply-To"]).strip("<>") == "alice-q1@example.org"
    assert "<alice-q1@example.org>" in str(to_alice["References"]).split()
    assert "started this topic or were replied to" in to_alice.get_body(("plain",)).get_content()


async def test_notify_off_and_an_each_subscription_mean_no_extra_copy(forum: Running, sink: SmtpSink) -> None:
    async with forum.deps.sessions() as session, session.begin():
        alice = await queries.user_by_email(session, ALICE)
        assert alice is not None
        alice.notify_replies = "off"
    await post(forum, make_mail(sender=ALICE, to=GENERAL, subject="Q", body="?", message_id="<q2@example.org>"),
               sender=ALICE, rcpt=GENERAL)
    await deliver(forum, sink, 2)
    await post(forum, make_mail(sender=BOB, to=GENERAL, subject="Re: Q", body="!", in_reply_to="<q2@example.org>"),
               sender=BOB, rcpt=GENERAL)
    assert set(await deliver(forum, sink, 1)) == {CAROL}


async def test_an_interleaved_reply_to_a_notification_stores_no_token_and_no_footer_line(
    forum: Running, sink: SmtpSink
) -> None:
    await post(forum, make_mail(sender=ALICE, to=GENERAL, subject="Editors", body="Vim or Emacs?\nOr nano?",
                                message_id="<q3@example.org>"), sender=ALICE, rcpt=GENERAL)
    notification = (await deliver(forum, sink, 2))[BOB].parsed()
    original = notification.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert TOKEN_RE.search(original)  # the footer Bob quotes does carry his tokens
    lines = original.rstrip("\n").split("\n")
    # Bob answers between the quoted lines, footer included, and signs off at the very bottom: everything above
    # his last line is "his reply" to a trimmer.
    interleaved = "\n".join(["> " + lines[0], "Emacs.", "> " + lines[1], "Nano is fine too.",
                             *("> " + line if line else ">" for line in lines[2:]), "", "Cheers, Bob"])
    reply = make_mail(sender=BOB, to=str(notification["Reply-To"]), subject="Re: Editors", body=interleaved,
                      message_id="<bob-i1@example.net>")
    await post(forum, reply, sender=BOB, rcpt=notification["Reply-To"].addresses[0].addr_spec)
    async with forum.deps.sessions() as session:
        stored = await session.scalar(select(Post).where(Post.message_id == "bob-i1@example.net"))
    assert stored is not None
    assert "Emacs." in stored.body_text and "Nano is fine too." in stored.body_text
    assert "Cheers, Bob" in stored.body_text
    for text in (stored.body_text, stored.body_html or ""):
        assert not TOKEN_RE.search(text), text
        for footer in ("Reply to this email", "To stop getting emails", "send an empty email", "View the topic"):
            assert footer not in text, text
    # And so the notification of Bob's reply carries none of Bob's secrets to Alice and Carol.
    for message in (await deliver(forum, sink, 2)).values():
        body = message.parsed().get_body(("plain",)).get_content()
        assert body.count("/unsubscribe/") == 1  # only the recipient's own link, in the recipient's own footer
