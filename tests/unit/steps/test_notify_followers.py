"""notify_followers: the post's fan-out job, written in the same transaction as the post; expanded, it makes one
outbox row per "each" subscriber of the post's category, never the author, and records the notification's
Message-ID so replies to it thread."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    Category,
    CategorySubscription,
    FanoutJob,
    FanoutKind,
    MessageRef,
    Outbox,
    OutboxKind,
    OutboxStatus,
    Post,
    SubscriptionMode,
    User,
    UserStatus,
)
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.notify import notification_message_id
from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.pipeline.steps.notify_followers import notify_followers as notify_step
from qaflow_mail.services.fanout_jobs import claim, expand_batch
from tests.unit.steps.conftest import DOMAIN, NOW, MakeContext, add_post, passed


async def follow(session: AsyncSession, user: User, category: Category, mode: SubscriptionMode) -> None:
    session.add(CategorySubscription(user_id=user.id, category_id=category.id, mode=mode.value, created_at=NOW))
    await session.flush()


async def expand_jobs(session: AsyncSession, deps: Deps, *, batch: int = 2) -> None:
    """Run every waiting fan-out job to its end in this session, as the fan-out worker would (small batches)."""
    while (job := await claim(session, worker="test", now=NOW)) is not None:
        while True:
            expanded = await expand_batch(session, deps, job_id=job.id, worker="test", now=NOW, limit=batch)
            assert expanded is not None
            if expanded.done:
                break


async def notify_followers(ctx: Context) -> Context | Outcome:
    """The step, then its job expanded."""
    result = await notify_step(ctx)
    await expand_jobs(ctx.session, ctx.deps)
    return result


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
    # The parent arrived by mail: In-Reply-To names the mail its author sent; References also names ours.
    assert b"In-Reply-To: <root-1@example.org>" in rows[0].raw
    assert f"References: <{notification_message_id(root.id, domain=DOMAIN, salt='')}> <root-1@example.org>".encode() \
        in rows[0].raw


async def test_the_step_writes_one_job_and_no_mail(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    await follow(session, bob, general, SubscriptionMode.EACH)
    post = await add_post(session, author=alice, category=general, message_id="msg-1@example.org")
    ctx = make_context(author=alice, category=general, post=post)

    assert passed(await notify_step(ctx)) is ctx
    assert passed(await notify_step(ctx)) is ctx  # a retried transaction: still one job

    jobs = (await session.scalars(select(FanoutJob))).all()
    assert [(j.kind, j.target_id, j.cursor, j.finished_at) for j in jobs] == [(FanoutKind.POST.value, post.id, 0, None)]
    assert await outbox(session) == []


async def test_batches_tell_each_follower_once_and_askers_once(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User, general: Category
) -> None:
    """Followers and askers interleaved by user id, in batches of 2: everyone once, a follower as a follower."""
    people = [await queries.add_user(session, email=f"p{i}@example.com", now=NOW) for i in range(7)]
    for person in people[::2]:
        await follow(session, person, general, SubscriptionMode.EACH)
    await follow(session, alice, general, SubscriptionMode.EACH)
    root = await add_post(session, author=alice, category=general, message_id="root-1@example.org")
    # p1 and p3 answered in the topic earlier; with notify_replies "all" they hear of the new reply as askers.
    for person in (people[1], people[3]):
        person.notify_replies = "all"
        await add_post(session, author=person, category=general, message_id=f"{person.id}@example.org", parent=root)
    reply = await add_post(session, author=bob, category=general, message_id="reply-1@example.org", parent=root)

    passed(await notify_followers(make_context(author=bob, category=general, parent=root, post=reply)))

    rows = [r for r in await outbox(session) if r.post_id == reply.id]
    expected = {alice.id, people[0].id, people[1].id, people[2].id, people[3].id, people[4].id, people[6].id}
    assert sorted(r.user_id for r in rows) == sorted(expected)
    (job,) = (await session.scalars(select(FanoutJob))).all()
    assert job.finished_at is not None and job.handed == len(expected)
