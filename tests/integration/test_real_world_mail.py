"""Real people's mail that used to be lost or refused, sent over loopback SMTP to the real listener and stored in
the real database (SQLite, and PostgreSQL when configured): one regression test per defect, each built from the
shape such a message has in the wild."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    Attachment,
    Category,
    CategorySubscription,
    InboundMessage,
    Outbox,
    Post,
    SubscriptionMode,
    Topic,
    User,
)
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.server.app import Running
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
ALICE = "alice@example.org"
BOB = "bob@example.net"
GENERAL = f"general@{DOMAIN}"
OPEN = f"open@{DOMAIN}"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 40
PKCS7 = b"0\x82\x05\x1a\x06\t*\x86H\x86\xf7\r\x01\x07\x02\xa0\x82\x05\x0b0\x82\x05\x07" + b"\x01" * 64


@pytest.fixture
async def forum(gateway: Running) -> Running:
    async with gateway.deps.sessions() as session, session.begin():
        now = datetime.now(UTC)
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_category(session, slug="open", name="Open", allow_strangers=True)
        await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
        await queries.add_user(session, email=BOB, display_name="Bob", now=now)
        await queries.add_user(session, email=f"staff@{DOMAIN}", display_name="Staff", now=now)
    return gateway


async def deliver(forum: Running, message: bytes | EmailMessage, *, sender: str, rcpt: str = GENERAL) -> int | None:
    conv = await send(forum.smtp_port, message, mail_from=sender, rcpt_tos=[rcpt])
    return conv.data_code


async def rows(forum: Running, model: type) -> list:  # type: ignore[type-arg]
    async with forum.deps.sessions() as session:
        return list((await session.scalars(select(model))).all())


async def count(forum: Running, model: type) -> int:
    async with forum.deps.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_nul_in_subject_body_and_file_name_is_stripped_and_the_mail_posted(forum: Running) -> None:
    """Defect 1: `=?ISO-8859-1?Q?testing=00?=` (PostgreSQL refused it: 451 on every retry)."""
    raw = (
        b"From: Alice <alice@example.org>\r\nTo: general@forum.test\r\n"
        b"Subject: =?ISO-8859-1?Q?testing=00?=\r\nMessage-ID: <nul-1@example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"before=00after\r\n"
        b"--b\r\nContent-Type: text/plain; name*=utf-8''log%00.txt\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''log%00.txt\r\n\r\nlog line\r\n--b--\r\n"
    )
    assert await deliver(forum, raw, sender=ALICE) == 250
    (post,) = await rows(forum, Post)
    (topic,) = await rows(forum, Topic)
    (attachment,) = await rows(forum, Attachment)
    assert post.subject == topic.subject == "testing"
    assert post.body_text == "beforeafter"
    assert attachment.filename == "log.txt"


async def test_staff_on_the_forums_own_domain_can_post(forum: Running) -> None:
    """Defect 2: a Message-ID on our domain that we did not mint is not a loop."""
    mail = make_mail(sender=f"Staff <staff@{DOMAIN}>", to=GENERAL, subject="Maintenance tonight",
                     body="The forum is down from 22:00 for an hour.", message_id=f"<CAF3a9x=q1@{DOMAIN}>")
    assert await deliver(forum, mail, sender=f"staff@{DOMAIN}") == 250
    (post,) = await rows(forum, Post)
    assert post.message_id == f"CAF3a9x=q1@{DOMAIN}"


async def test_a_screenshot_without_words_is_posted(forum: Running) -> None:
    """Defect 3: an image-only mail ("Sent from my iPhone" and a photo) is a post, not "empty once trimmed"."""
    msg = make_mail(sender=ALICE, to=GENERAL, subject="This error", body="\n\nSent from my iPhone\n",
                    message_id="<shot@example.org>")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="IMG_0042.PNG")
    assert await deliver(forum, msg, sender=ALICE) == 250
    (post,) = await rows(forum, Post)
    (attachment,) = await rows(forum, Attachment)
    assert post.body_text == "" and attachment.post_id == post.id


async def test_an_empty_mail_is_refused_for_having_no_text(forum: Running) -> None:
    conv = await send(forum.smtp_port, make_mail(sender=ALICE, to=GENERAL, subject="?", body="\n"),
                      mail_from=ALICE, rcpt_tos=[GENERAL])
    assert conv.data is not None and conv.data[0] == 550 and "no text and no attachment" in conv.data[1]


async def test_a_refused_mail_leaves_no_staged_user_behind(forum: Running) -> None:
    """Defect 4: a stranger's mail to an open category, refused (a reply that is only a quote), stores nothing but
    the inbound record."""
    users_before = await count(forum, User)
    mail = make_mail(sender="stranger@elsewhere.example", to=OPEN, subject="Re: hi",
                     body="On Mon, 2 Jun 2025, Bob wrote:\n> hello\n> there\n")
    conv = await send(forum.smtp_port, mail, mail_from="stranger@elsewhere.example", rcpt_tos=[OPEN])
    assert conv.data_code == 550
    assert await count(forum, User) == users_before
    assert await count(forum, Post) == 0
    (record,) = await rows(forum, InboundMessage)
    assert record.disposition == "rejected"


async def test_a_pdf_that_is_not_a_pdf_is_dropped_and_the_text_posted(forum: Running) -> None:
    """Defect 5: a PDF name and type over a PKCS#7 blob no longer refuses the whole mail; the sender is told."""
    msg = make_mail(sender=ALICE, to=GENERAL, subject="Signed invoice", body="Here is the invoice, see page 2.",
                    message_id="<pdf-lie@example.org>")
    msg.add_attachment(PKCS7, maintype="application", subtype="pdf", filename="invoice.pdf")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="page2.png")
    assert await deliver(forum, msg, sender=ALICE) == 250
    (post,) = await rows(forum, Post)
    assert post.body_text == "Here is the invoice, see page 2."
    assert [a.filename for a in await rows(forum, Attachment)] == ["page2.png"]
    notices = [o for o in await rows(forum, Outbox) if o.dedupe_key.startswith("attachments:")]
    assert len(notices) == 1 and notices[0].recipient == ALICE
    assert b"invoice.pdf" in notices[0].raw


async def test_human_mail_relayed_by_a_list_is_posted(forum: Running) -> None:
    """Defect 6: Precedence: list with a person's From and a foreign List-Id is not automatic."""
    mail = make_mail(sender=ALICE, to=GENERAL, subject="Build fails on ARM", body="Since 2.3 the build fails.",
                     headers={"Precedence": "list", "List-Id": "<users.httpd.apache.org>",
                              "List-Post": "<mailto:users@httpd.apache.org>", "Sender": "users-return@apache.org"})
    assert await deliver(forum, mail, sender="users-return-1@httpd.apache.org") == 250
    assert len(await rows(forum, Post)) == 1


async def test_a_dmarc_rewritten_from_is_posted_as_its_real_author(forum: Running) -> None:
    """Defect 7: Google Groups' `'Alice' via Western Support <list@…>` with X-Original-From and Reply-To."""
    mail = make_mail(sender="'Alice' via Western Support <westernsupport@googlegroups.com>", to=GENERAL,
                     subject="Question", body="How do I rotate the logs?",
                     headers={"Reply-To": f"Alice <{ALICE}>", "X-Original-From": f"Alice <{ALICE}>",
                              "Precedence": "list", "List-ID": "<westernsupport.googlegroups.com>"})
    assert await deliver(forum, mail, sender="westernsupport+bncBC@googlegroups.com") == 250
    (post,) = await rows(forum, Post)
    async with forum.deps.sessions() as session:
        author = await session.get(User, post.author_id)
    assert author is not None and author.email == ALICE


async def test_lines_longer_than_1000_bytes_are_taken(forum: Running) -> None:
    """Defect 8: a long pasted line is not `500 Line too long`."""
    long_line = "x" * 5000
    raw = (f"From: {ALICE}\r\nTo: {GENERAL}\r\nSubject: Long line\r\nMessage-ID: <long@example.org>\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\nA long line follows.\r\n{long_line}\r\n").encode()
    assert await deliver(forum, raw, sender=ALICE) == 250
    (post,) = await rows(forum, Post)
    assert long_line in post.body_text


async def test_a_reply_that_is_only_unsubscribe_is_applied_not_posted(forum: Running) -> None:
    """Defect 9: "Unsubscribe" as the whole reply mutes the category and confirms by mail; nothing is posted."""
    first = make_mail(sender=ALICE, to=GENERAL, subject="Q", body="Question?", message_id="<q@example.org>")
    assert await deliver(forum, first, sender=ALICE) == 250
    async with forum.deps.sessions() as session:
        post = (await session.scalars(select(Post))).one()
        bob = await queries.user_by_email(session, BOB)
        assert bob is not None
    token = sign(TokenKind.REPLY, (post.id, bob.id), secret=forum.deps.settings.tokens.secret,
                 issued=datetime.now(UTC).date())
    address = f"reply+{token}@{DOMAIN}"
    reply = make_mail(sender=BOB, to=address, subject="Re: Q",
                      body="Unsubscribe\n\nOn Mon, 2 Jun 2025, Alice wrote:\n> Question?\n")
    assert await deliver(forum, reply, sender=BOB, rcpt=address) == 250
    assert len(await rows(forum, Post)) == 1
    async with forum.deps.sessions() as session:
        mode = await session.scalar(
            select(CategorySubscription.mode).join(Category, Category.id == CategorySubscription.category_id)
            .where(CategorySubscription.user_id == bob.id, Category.slug == "general"))
    assert mode == SubscriptionMode.MUTE
    assert any(o.recipient == BOB and o.dedupe_key.startswith("unsubscribed:") for o in await rows(forum, Outbox))


async def test_replies_sharing_a_missing_parent_join_one_topic_and_the_parent_leads_it(forum: Running) -> None:
    """Threads joined at missing parents: two answers to a patch that never reached us share a topic; the patch,
    arriving later, becomes its first post. A junk id (`<yes>`) joins nothing."""
    patch = "<20240101.patch-1@git.example.org>"
    for mid, sender in (("<a1@example.org>", ALICE), ("<b1@example.net>", BOB)):
        reply = make_mail(sender=sender, to=GENERAL, subject="Re: [PATCH] fix the build", body=f"Looks good ({mid})",
                          message_id=mid, in_reply_to=patch, references=[patch])
        assert await deliver(forum, reply, sender=sender) == 250
    junk = make_mail(sender=ALICE, to=GENERAL, subject="Re: unrelated", body="Other thread.",
                     message_id="<c1@example.org>", in_reply_to="<yes>")
    assert await deliver(forum, junk, sender=ALICE) == 250
    posts = {p.message_id: p for p in await rows(forum, Post)}
    assert posts["a1@example.org"].topic_id == posts["b1@example.net"].topic_id
    assert posts["c1@example.org"].topic_id != posts["a1@example.org"].topic_id

    original = make_mail(sender=ALICE, to=GENERAL, subject="[PATCH] fix the build", body="The patch.",
                         message_id=patch)
    assert await deliver(forum, original, sender=ALICE) == 250
    posts = {p.message_id: p for p in await rows(forum, Post)}
    root = posts["20240101.patch-1@git.example.org"]
    assert posts["a1@example.org"].topic_id == posts["b1@example.net"].topic_id == root.topic_id
    assert posts["a1@example.org"].parent_id == posts["b1@example.net"].parent_id == root.id
    assert root.parent_id is None
    async with forum.deps.sessions() as session:
        topic_ids = set((await session.scalars(select(Topic.id))).all())
        first = (await queries.topic_posts(session, root.topic_id))[0][0]
    assert first.id == root.id
    assert len(topic_ids) == 2  # the patch's topic and the junk-id reply's


async def test_a_reply_naming_only_an_ancestor_beyond_anothers_parent_joins_its_topic(forum: Running) -> None:
    """A ticket system's thread: the first answer replies to a stored mail and also names the ticket's own root,
    which never reached us; a later update naming only that root joins the same topic."""
    ticket = "<RT-Ticket-33575@rt.example.org>"
    first = make_mail(sender=ALICE, to=GENERAL, subject="FYI: disk full", body="The disk is full.",
                      message_id="<fyi@example.org>")
    answer = make_mail(sender=BOB, to=GENERAL, subject="[rt #33575] Ticket opened: FYI", body="Ticket opened.",
                       message_id="<rt-1@rt.example.org>", in_reply_to="<fyi@example.org>",
                       references=[ticket, "<fyi@example.org>"])
    resolved = make_mail(sender=BOB, to=GENERAL, subject="[rt #33575] Resolved: FYI", body="Resolved.",
                         message_id="<rt-2@rt.example.org>", references=[ticket])
    for mail, sender in ((first, ALICE), (answer, BOB), (resolved, BOB)):
        assert await deliver(forum, mail, sender=sender) == 250
    posts = {p.message_id: p for p in await rows(forum, Post)}
    assert len({p.topic_id for p in posts.values()}) == 1
    assert posts["rt-1@rt.example.org"].parent_id == posts["fyi@example.org"].id
