"""The real listener over loopback SMTP, writing to a real database: topics, replies and every reply code."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, Disposition, InboundMessage, Post, Topic, User, UserStatus
from qaflow_mail.server.app import Running
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
ALICE = "alice@example.org"
BOB = "bob@example.net"


async def seed(gateway: Running) -> None:
    async with gateway.deps.sessions() as session, session.begin():
        now = datetime.now(UTC)
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_category(session, slug="help", name="Help", allow_strangers=False)
        await queries.add_category(session, slug="open", name="Open", allow_strangers=True)
        await queries.add_category(session, slug="announcements", name="Announcements", allow_strangers=False)
        await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
        await queries.add_user(session, email=BOB, display_name="Bob", now=now)
        await queries.add_user(session, email="mallory@example.com", status=UserStatus.DISABLED, now=now)


async def count(gateway: Running, model: type) -> int:
    async with gateway.deps.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def posts(gateway: Running) -> list[Post]:
    async with gateway.deps.sessions() as session:
        return list((await session.scalars(select(Post).order_by(Post.id))).all())


@pytest.fixture
async def forum(gateway: Running) -> Running:
    await seed(gateway)
    return gateway


async def test_mail_to_category_creates_topic(forum: Running) -> None:
    msg = make_mail(sender=f"Alice <{ALICE}>", to=f"general@{DOMAIN}", subject="How do I reset my password?",
                    body="I forgot it.\n\nThanks!", message_id="<q1@client.test>")
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])
    assert conv.rcpts[f"general@{DOMAIN}"][0] == 250
    assert conv.data_code == 250
    async with forum.deps.sessions() as session:
        topic = (await session.scalars(select(Topic))).one()
        post = (await session.scalars(select(Post))).one()
        category = await session.get(Category, topic.category_id)
        author = await session.get(User, post.author_id)
    assert topic.subject == "How do I reset my password?"
    assert category is not None and category.slug == "general"
    assert author is not None and author.email == ALICE
    assert post.message_id == "q1@client.test"
    assert post.parent_id is None
    assert "I forgot it." in post.body_text


async def test_reply_by_in_reply_to_joins_topic(forum: Running) -> None:
    first = make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="Q", body="Question?", message_id="<a@c.test>")
    reply = make_mail(sender=BOB, to=f"general@{DOMAIN}", subject="Re: Q", body="Answer.", message_id="<b@c.test>",
                      in_reply_to="<a@c.test>")
    for msg, sender in ((first, ALICE), (reply, BOB)):
        conv = await send(forum.smtp_port, msg, mail_from=sender, rcpt_tos=[f"general@{DOMAIN}"])
        assert conv.data_code == 250
    stored = await posts(forum)
    assert len(stored) == 2
    assert stored[1].topic_id == stored[0].topic_id
    assert stored[1].parent_id == stored[0].id
    assert await count(forum, Topic) == 1


async def test_reply_by_references_only_with_unknown_direct_parent(forum: Running) -> None:
    first = make_mail(sender=ALICE, to=f"help@{DOMAIN}", subject="Q", body="Question?", message_id="<root@c.test>")
    assert (await send(forum.smtp_port, first, mail_from=ALICE, rcpt_tos=[f"help@{DOMAIN}"])).data_code == 250
    # The direct parent never reached us; a known ancestor further up References still places the reply.
    reply = make_mail(sender=BOB, to=f"general@{DOMAIN}", subject="Re: Q", body="Late answer.",
                      message_id="<c@c.test>", references=["<root@c.test>", "<missing@elsewhere.test>"])
    assert (await send(forum.smtp_port, reply, mail_from=BOB, rcpt_tos=[f"general@{DOMAIN}"])).data_code == 250
    root, answer = await posts(forum)
    assert answer.topic_id == root.topic_id
    assert answer.parent_id == root.id
    assert await count(forum, Topic) == 1  # stays in the help topic although it was sent to general


async def test_orphan_reply_is_reattached_when_parent_arrives(forum: Running) -> None:
    reply = make_mail(sender=BOB, to=f"general@{DOMAIN}", subject="Re: Q", body="Answer first.",
                      message_id="<late-child@c.test>", in_reply_to="<early-parent@c.test>")
    parent = make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="Q", body="The question.",
                       message_id="<early-parent@c.test>")
    assert (await send(forum.smtp_port, reply, mail_from=BOB, rcpt_tos=[f"general@{DOMAIN}"])).data_code == 250
    assert await count(forum, Topic) == 1
    assert (await send(forum.smtp_port, parent, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])).data_code == 250
    child, root = await posts(forum)
    assert child.topic_id == root.topic_id
    assert child.parent_id == root.id
    assert await count(forum, Topic) == 1


async def test_same_message_twice_is_stored_once(forum: Running) -> None:
    msg = make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="Once", body="Only once please.",
                    message_id="<dup@c.test>")
    for _ in range(2):
        conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])
        assert conv.data_code == 250
    assert await count(forum, Post) == 1
    async with forum.deps.sessions() as session:
        dispositions = (await session.scalars(select(InboundMessage.disposition).order_by(InboundMessage.id))).all()
    assert dispositions == [Disposition.ACCEPTED, Disposition.DISCARDED]


@pytest.mark.parametrize(
    "rcpt",
    [f"nosuch@{DOMAIN}", "general@other.test", f"reply+garbage@{DOMAIN}", f"nosuch-request@{DOMAIN}",
     f"nosuch-join@{DOMAIN}"],
)
async def test_unknown_recipient_refused_at_rcpt(forum: Running, rcpt: str) -> None:
    msg = make_mail(sender=ALICE, to=rcpt)
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[rcpt])
    code, text_ = conv.rcpts[rcpt]
    assert code == 550
    assert text_.startswith("5.1.1")
    assert conv.data is None
    assert await count(forum, Post) == 0


async def test_one_bad_recipient_does_not_block_the_good_one(forum: Running) -> None:
    msg = make_mail(sender=ALICE, to=f"general@{DOMAIN}")
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[f"nosuch@{DOMAIN}", f"general@{DOMAIN}"])
    assert conv.rcpts[f"nosuch@{DOMAIN}"][0] == 550
    assert conv.data_code == 250
    assert await count(forum, Post) == 1


@pytest.mark.parametrize("sender", ["stranger@example.com", "mallory@example.com"])
async def test_unknown_or_disabled_sender_refused(forum: Running, sender: str) -> None:
    msg = make_mail(sender=sender, to=f"general@{DOMAIN}")
    conv = await send(forum.smtp_port, msg, mail_from=sender, rcpt_tos=[f"general@{DOMAIN}"])
    assert conv.data is not None
    code, text_ = conv.data
    assert code == 550
    assert text_.startswith("5.7.1")
    assert await count(forum, Post) == 0
    async with forum.deps.sessions() as session:
        record = (await session.scalars(select(InboundMessage))).one()
    assert record.disposition == Disposition.REJECTED
    assert record.raw.startswith(b"From:") or b"Message-ID" in record.raw  # kept, so the refusal is explainable


async def test_stranger_allowed_category_stages_user(forum: Running) -> None:
    msg = make_mail(sender="New Person <newbie@example.com>", to=f"open@{DOMAIN}", subject="Hi all")
    conv = await send(forum.smtp_port, msg, mail_from="newbie@example.com", rcpt_tos=[f"open@{DOMAIN}"])
    assert conv.data_code == 250
    async with forum.deps.sessions() as session:
        user = await queries.user_by_email(session, "newbie@example.com")
    assert user is not None
    assert user.status == UserStatus.STAGED
    assert user.display_name == "New Person"
    assert await count(forum, Post) == 1


async def test_message_over_size_limit(forum: Running) -> None:
    limit = forum.deps.settings.smtp.max_message_size
    msg = make_mail(sender=ALICE, to=f"general@{DOMAIN}", body="x" * 76 + "\n" * 1)
    msg.set_content(("y" * 76 + "\n") * (limit // 77 + 10))
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])
    assert conv.data is not None
    code, text_ = conv.data
    assert code == 552
    assert text_.startswith("5.3.4")
    assert await count(forum, Post) == 0


async def test_database_failure_is_temporary_and_stores_nothing(forum: Running) -> None:
    async with forum.deps.sessions() as session, session.begin():
        await session.execute(text("ALTER TABLE inbound_messages RENAME TO inbound_messages_away"))
    try:
        msg = make_mail(sender=ALICE, to=f"general@{DOMAIN}", message_id="<retry-me@c.test>")
        conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])
        assert conv.data is not None
        code, text_ = conv.data
        assert code == 451
        assert text_.startswith("4.3.0")
        assert await count(forum, Post) == 0  # the post written before the failure was rolled back
    finally:
        async with forum.deps.sessions() as session, session.begin():
            await session.execute(text("ALTER TABLE inbound_messages_away RENAME TO inbound_messages"))
    # The sending MTA retries: now it goes through, once.
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])
    assert conv.data_code == 250
    assert await count(forum, Post) == 1


async def test_postmaster_is_accepted(forum: Running) -> None:
    for rcpt in (f"postmaster@{DOMAIN}", f"PostMaster@{DOMAIN}"):
        msg = make_mail(sender="someone@example.com", to=rcpt, subject="Your server")
        conv = await send(forum.smtp_port, msg, mail_from="someone@example.com", rcpt_tos=[rcpt])
        assert conv.rcpts[rcpt][0] == 250
        assert conv.data_code == 250
    assert await count(forum, Post) == 0
    async with forum.deps.sessions() as session:
        kept = (await session.scalars(select(InboundMessage))).all()
    assert [r.disposition for r in kept] == [Disposition.ACCEPTED, Disposition.ACCEPTED]
    assert all("postmaster" in r.reason for r in kept)


async def test_too_many_recipients_get_a_temporary_refusal(forum: Running) -> None:
    limit = forum.deps.settings.smtp.max_recipients
    rcpts = [f"general@{DOMAIN}"] * limit + [f"help@{DOMAIN}"]
    msg = make_mail(sender=ALICE, to=f"general@{DOMAIN}", message_id="<many@c.test>")
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=rcpts)
    code, text_ = conv.rcpts[f"help@{DOMAIN}"]
    assert (code, text_.split()[0]) == (452, "4.5.3")  # RFC 5321 §4.5.3.1.10: the client sends the rest later
    assert conv.data_code == 250
    assert await count(forum, Post) == 1


async def test_nobody_posts_into_announcements_by_mail(forum: Running) -> None:
    """Announcements are published through announce@ only; the category address and replies are refused."""
    new = make_mail(sender=ALICE, to=f"announcements@{DOMAIN}", subject="Password reset required",
                    message_id="<fake-ann@c.test>")
    conv = await send(forum.smtp_port, new, mail_from=ALICE, rcpt_tos=[f"announcements@{DOMAIN}"])
    assert conv.data is not None and conv.data[0] == 550 and conv.data[1].startswith("5.7.1")
    assert await count(forum, Post) == 0


@pytest.mark.parametrize("filename", ["run.bat\u200b", "invoice.pdf.ex\u00ade"])
async def test_hidden_executable_extension_is_refused(forum: Running, filename: str) -> None:
    msg = make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="See attached")
    msg.add_attachment(b"@echo off\r\ndel *.*\r\n", maintype="application", subtype="octet-stream", filename=filename)
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])
    assert conv.data is not None and conv.data[0] == 554 and conv.data[1].startswith("5.7.1"), conv
    assert await count(forum, Post) == 0
