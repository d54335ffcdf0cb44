"""store_post / store_imported_post: the topic (for a new thread) and the post, written in the caller's
transaction. A live post is dated now; an archived one keeps its own Date when that is sane."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Attachment, Category, PendingReference, Post, Source, Topic, User
from qaflow_mail.mail.content import extract_content
from qaflow_mail.pipeline import Context
from qaflow_mail.pipeline.steps.store_post import store_imported_post, store_post
from qaflow_mail.services.posts import NO_SUBJECT
from tests.unit.steps.conftest import NOW, MakeContext, add_post, passed

OLD_DATE = "Tue, 14 Mar 2017 08:15:00 -0500"
OLD_WHEN = datetime(2017, 3, 14, 13, 15, tzinfo=UTC)


def ready(ctx: Context, **fields: object) -> Context:
    """`ctx` as store_post receives it: its content extracted (what extract_body would have set)."""
    return dataclasses.replace(ctx, content=extract_content(ctx.parsed), **fields)


async def count(session: AsyncSession, model: type) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_new_thread_stores_its_topic_and_post(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    ctx = ready(make_context({"Message-ID": "<new-1@example.org>", "Subject": "Rotating logs"},
                             body="How do I rotate them?\n"), author=alice, category=general)

    out = passed(await store_post(ctx))

    post = out.post
    assert post is not None and post.id is not None
    assert await session.get(Post, post.id) is post
    assert (post.message_id, post.author_id, post.parent_id, post.source) == ("new-1@example.org", alice.id, None,
                                                                               Source.SMTP.value)
    assert post.subject == "Rotating logs"
    assert "How do I rotate them?" in post.body_text
    assert post.created_at == NOW
    topic = await session.get(Topic, post.topic_id)
    assert topic is not None
    assert (topic.category_id, topic.author_id, topic.subject) == (general.id, alice.id, "Rotating logs")
    assert topic.created_at == NOW and topic.last_post_at == NOW
    assert await count(session, Topic) == 1 and await count(session, Post) == 1


async def test_a_reply_joins_its_parents_topic(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    earlier = datetime(2025, 6, 1, tzinfo=UTC)
    root = await add_post(session, author=alice, category=general, message_id="root-1@example.org",
                          created_at=earlier)
    ctx = ready(make_context({"From": f"Bob <{bob.email}>", "In-Reply-To": "<root-1@example.org>",
                              "Message-ID": "<reply-1@example.org>"}), author=bob, category=general, parent=root)

    post = passed(await store_post(ctx)).post

    assert post is not None
    assert (post.topic_id, post.parent_id, post.author_id) == (root.topic_id, root.id, bob.id)
    assert post.in_reply_to == "root-1@example.org"
    assert await count(session, Topic) == 1
    topic = await session.get(Topic, root.topic_id)
    assert topic is not None and topic.last_post_at == NOW


async def test_ancestors_not_yet_arrived_are_remembered(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    ctx = ready(make_context({"In-Reply-To": "<missing-1@example.org>"}), author=alice, category=general,
                candidates=("missing-1@example.org", "missing-0@example.org"))

    post = passed(await store_post(ctx)).post

    assert post is not None
    waiting = (await session.scalars(
        select(PendingReference.message_id).where(PendingReference.post_id == post.id)
        .order_by(PendingReference.position)
    )).all()
    assert waiting == ["missing-1@example.org", "missing-0@example.org"]


async def test_an_earlier_orphan_moves_under_the_post_it_was_waiting_for(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    orphan = await add_post(session, author=bob, category=general, message_id="orphan-1@example.org")
    session.add(PendingReference(post_id=orphan.id, message_id="late-1@example.org", position=0))
    await session.flush()
    ctx = ready(make_context({"Message-ID": "<late-1@example.org>"}), author=alice, category=general)

    post = passed(await store_post(ctx)).post

    assert post is not None
    await session.refresh(orphan)
    assert orphan.parent_id == post.id


async def test_a_missing_subject_is_named(make_context: MakeContext, alice: User, general: Category) -> None:
    post = passed(await store_post(ready(make_context({"Subject": None}), author=alice, category=general))).post

    assert post is not None and post.subject == NO_SUBJECT


async def test_attachments_are_stored_with_the_post(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    raw = (
        b"From: Alice <alice@example.org>\r\nTo: general@forum.test\r\nSubject: Logs\r\n"
        b"Message-ID: <att-1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nThe log is attached.\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=app.log\r\n\r\n"
        b"error: disk full\r\n--b--\r\n"
    )

    post = passed(await store_post(ready(make_context(raw), author=alice, category=general))).post

    assert post is not None
    stored = (await session.scalars(select(Attachment).where(Attachment.post_id == post.id))).all()
    assert [(a.filename, a.content_type) for a in stored] == [("app.log", "text/plain")]
    assert stored[0].content.startswith(b"error: disk full")


async def test_a_live_post_is_dated_now_whatever_its_date_header(
    make_context: MakeContext, alice: User, general: Category
) -> None:
    post = passed(await store_post(ready(make_context({"Date": OLD_DATE}), author=alice, category=general))).post

    assert post is not None and post.created_at == NOW


async def test_an_imported_post_keeps_its_own_date(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    ctx = ready(make_context({"Date": OLD_DATE}, source=Source.IMPORT), author=alice, category=general)

    post = passed(await store_imported_post(ctx)).post

    assert post is not None
    assert post.created_at == OLD_WHEN
    assert post.source == Source.IMPORT.value
    topic = await session.get(Topic, post.topic_id)
    assert topic is not None and topic.created_at == OLD_WHEN


@pytest.mark.parametrize("date", ["Sat, 1 Jan 2101 00:00:00 +0000", "Thu, 1 Jan 1970 00:00:00 +0000", "not a date",
                                  None], ids=["future", "before-1980", "garbage", "missing"])
async def test_an_imported_post_with_an_insane_date_is_dated_now(
    make_context: MakeContext, alice: User, general: Category, date: str | None
) -> None:
    ctx = ready(make_context({"Date": date}, source=Source.IMPORT), author=alice, category=general)

    post = passed(await store_imported_post(ctx)).post

    assert post is not None and post.created_at == NOW
