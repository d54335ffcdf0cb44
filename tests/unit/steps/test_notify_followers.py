"""notify_followers: one outbox row per "each" subscriber of the post's category, never the author, written in
the same transaction as the post; the notification's Message-ID is recorded so replies to it thread."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    Category,
    CategorySubscription,
    MessageRef,
    Outbox,
    OutboxKind,
    OutboxStatus,
    Post,
    SubscriptionMode,
    User,
    UserStatus,
)
from qaflow_mail.outbound.notify import notification_message_id
from qaflow_mail.pipeline.steps.notify_followers import notify_followers
from tests.unit.steps.conftest import DOMAIN, NOW, MakeContext, add_post, passed


async def follow(session: AsyncSession, user: User, category: Category, mode: SubscriptionMode) -> None:
    session.add(CategorySubscription(user_id=user.id, category_id=category.id, mode=mode.value, created_at=NOW))
    await session.flush()


async def outbox(session: AsyncSession) -> list[Outbox]:
    return list((await session.scalars(select(Outbox).order_by(Outbox.id))).all())


async def test_each_subscribers_get_a_notification_but_not_the_author(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    await follow(session, alice, general, SubscriptionMode.EACH)
    await follow(session, bob, general, SubscriptionMode.EACH)
    post = await add_post(session, author=alice, category=general, message_id="msg-1@example.org")
    ctx = make_context(author=alice, category=general, post=post)

    assert passed(await notify_followers(ctx)) is ctx

    rows = await outbox(session)
    assert [(r.recipient, r.user_id, r.post_id, r.kind, r.status) for r in rows] == [
        (bob.email, bob.id, post.id, OutboxKind.NOTIFICATION.value, OutboxStatus.PENDING.value)
    ]
    raw = rows[0].raw
    assert f"To: {bob.email}".encode() in raw
    assert b"Reply-To:" in raw and f"@{DOMAIN}".encode() in raw
    assert rows[0].envelope_from.endswith(f"@{DOMAIN}")
    ref = await session.scalar(select(MessageRef).where(MessageRef.post_id == post.id))
    assert ref is not None and ref.message_id == rows[0].message_id


async def test_digest_and_muted_subscribers_get_no_notification(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    carol = await queries.add_user(session, email="carol@example.com", now=NOW)
    dave = await queries.add_user(session, email="dave@example.com", now=NOW)
    await follow(session, bob, general, SubscriptionMode.DAILY)
    await follow(session, carol, general, SubscriptionMode.WEEKLY)
    await follow(session, dave, general, SubscriptionMode.MUTE)
    post = await add_post(session, author=alice, category=general, message_id="msg-1@example.org")

    passed(await notify_followers(make_context(author=alice, category=general, post=post)))

    assert await outbox(session) == []


async def test_followers_of_another_category_get_nothing(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category,
    open_category: Category,
) -> None:
    await follow(session, bob, open_category, SubscriptionMode.EACH)
    post = await add_post(session, author=alice, category=general, message_id="msg-1@example.org")

    passed(await notify_followers(make_context(author=alice, category=general, post=post)))

    assert await outbox(session) == []


async def test_staged_and_disabled_followers_are_not_mailed(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    staged = await queries.add_user(session, email="staged@example.com", status=UserStatus.STAGED, now=NOW)
    disabled = await queries.add_user(session, email="off@example.com", status=UserStatus.DISABLED, now=NOW)
    await follow(session, staged, general, SubscriptionMode.EACH)
    await follow(session, disabled, general, SubscriptionMode.EACH)
    post = await add_post(session, author=alice, category=general, message_id="msg-1@example.org")

    passed(await notify_followers(make_context(author=alice, category=general, post=post)))

    assert await outbox(session) == []


async def test_running_twice_queues_each_notification_once(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    await follow(session, bob, general, SubscriptionMode.EACH)
    post = await add_post(session, author=alice, category=general, message_id="msg-1@example.org")
    ctx = make_context(author=alice, category=general, post=post)

    await notify_followers(ctx)
    await notify_followers(ctx)

    assert [r.recipient for r in await outbox(session)] == [bob.email]


async def test_a_reply_notification_threads_under_its_parent(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    await follow(session, alice, general, SubscriptionMode.EACH)
    root = await add_post(session, author=alice, category=general, message_id="root-1@example.org")
    reply: Post = await add_post(session, author=bob, category=general, message_id="reply-1@example.org", parent=root)

    passed(await notify_followers(make_context(author=bob, category=general, parent=root, post=reply)))

    rows = await outbox(session)
    assert [(r.recipient, r.post_id) for r in rows] == [(alice.email, reply.id)]
    assert f"In-Reply-To: <{notification_message_id(root.id, domain=DOMAIN)}>".encode() in rows[0].raw
