"""Rotating a user's tokens voids every unsubscribe link they were ever mailed: a category's, the announcements'
and a digest's own "stop this digest" link, each taken from a real outbox message; a link minted afterwards works."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

from sqlalchemy import select

from qaflow_mail.db.models import (
    Category,
    CategorySubscription,
    Outbox,
    OutboxKind,
    Post,
    SubscriptionMode,
    Topic,
    User,
)
from qaflow_mail.outbound.digest_run import run_digests
from qaflow_mail.outbound.stored_bodies import whole_message
from qaflow_mail.server.app import Running
from qaflow_mail.services.announcements import publish_text
from qaflow_mail.services.subscriptions import (
    UnsubscribeStatus,
    check_unsubscribe_token,
    rotate_tokens,
    unsubscribe_by_token,
)
from qaflow_mail.services.users import find_user
from tests.fanout import fanout_done

ADMIN, BOB = "alice@example.org", "bob@example.org"
JUNE_1 = datetime(2025, 6, 1, 5, 0, tzinfo=UTC)  # 07:00 in Berlin, Bob's digest hour
TOKEN_RE = re.compile(r"<mailto:unsubscribe\+([a-z2-7]+)@")


async def seed(run: Running) -> None:
    async with run.deps.sessions() as session, session.begin():
        session.add(User(email=ADMIN, display_name="Alice", is_admin=True, created_at=JUNE_1 - timedelta(days=30)))
        bob = User(email=BOB, display_name="Bob", timezone="Europe/Berlin", created_at=JUNE_1 - timedelta(days=30))
        general = Category(slug="general", name="General", allow_strangers=False, created_at=JUNE_1)
        session.add_all([bob, general, Category(slug="announcements", name="Announcements", allow_strangers=False,
                                                created_at=JUNE_1)])
        await session.flush()
        session.add(CategorySubscription(user_id=bob.id, category_id=general.id, mode=SubscriptionMode.DAILY.value,
                                         last_digest_at=JUNE_1, created_at=JUNE_1 - timedelta(days=30)))


async def new_topic(run: Running, at: datetime) -> None:
    async with run.deps.sessions() as session, session.begin():
        admin = await find_user(session, ADMIN)
        general = await session.scalar(select(Category).where(Category.slug == "general"))
        assert general is not None
        topic = Topic(category_id=general.id, author_id=admin.id, subject=f"News of {at:%d %B}", created_at=at,
                      last_post_at=at)
        session.add(topic)
        await session.flush()
        session.add(Post(topic_id=topic.id, author_id=admin.id, message_id=f"{at:%Y%m%d}@client.test",
                         subject=topic.subject, body_text="Something happened.", created_at=at))


async def announcement_link(run: Running, subject: str) -> str:
    """Publish an announcement; the unsubscribe token of the copy queued for Bob."""
    now = datetime.now(UTC)
    async with run.deps.sessions() as session, session.begin():
        admin = await find_user(session, ADMIN)
        published = await publish_text(session, run.deps, author=admin, subject=subject, text="Read me.", now=now)
    run.deps.outbox_wakeup()  # the broadcast is a fan-out job: the worker writes the copies
    await fanout_done(run.deps)
    async with run.deps.sessions() as session:
        row = await session.scalar(select(Outbox).where(Outbox.announcement_id == published.announcement.id,
                                                        Outbox.recipient == BOB))
    assert row is not None
    return token_of(row.raw)


async def digest_link(run: Running, day: datetime) -> str:
    """Run the daily digests at ``day``; the List-Unsubscribe token (the whole digest's stop) of Bob's digest."""
    await run_digests(run.deps.sessions, settings=run.deps.settings, renderer=run.deps.renderer, now=day,
                      period="daily")
    async with run.deps.sessions() as session:
        row = await session.scalar(select(Outbox).where(Outbox.kind == OutboxKind.DIGEST.value)
                                   .order_by(Outbox.id.desc()).limit(1))
        assert row is not None and row.created_at >= day - timedelta(minutes=1)
        return token_of(await whole_message(session, row.body_id, row.raw))


def token_of(raw: bytes) -> str:
    message = message_from_bytes(raw, policy=policy.default)
    match = TOKEN_RE.search(str(message["List-Unsubscribe"]))
    assert match is not None, message["List-Unsubscribe"]
    return match.group(1)


async def status(run: Running, token: str) -> UnsubscribeStatus:
    async with run.deps.sessions() as session:
        return (await check_unsubscribe_token(session, token, run.deps.settings, datetime.now(UTC))).status


async def test_a_rotation_voids_old_announcement_and_digest_links_and_new_ones_work(gateway: Running) -> None:
    await seed(gateway)
    await new_topic(gateway, JUNE_1 + timedelta(hours=5))
    old_announcement = await announcement_link(gateway, "Before the rotation")
    old_digest = await digest_link(gateway, JUNE_1 + timedelta(days=1, hours=1))
    assert await status(gateway, old_announcement) is UnsubscribeStatus.VALID
    assert await status(gateway, old_digest) is UnsubscribeStatus.VALID

    async with gateway.deps.sessions() as session, session.begin():
        rotate_tokens(await find_user(session, BOB))

    assert await status(gateway, old_announcement) is UnsubscribeStatus.INVALID
    assert await status(gateway, old_digest) is UnsubscribeStatus.INVALID

    await new_topic(gateway, JUNE_1 + timedelta(days=1, hours=5))
    new_announcement = await announcement_link(gateway, "After the rotation")
    new_digest = await digest_link(gateway, JUNE_1 + timedelta(days=2, hours=1))
    assert new_digest != old_digest and new_announcement != old_announcement
    now = datetime.now(UTC)
    async with gateway.deps.sessions() as session, session.begin():
        for token in (new_announcement, new_digest):
            result = await unsubscribe_by_token(session, token, gateway.deps.settings, now)
            assert result.status is UnsubscribeStatus.UNSUBSCRIBED, result.detail
        bob = await find_user(session, BOB)
        modes = (await session.scalars(select(CategorySubscription.mode)
                                       .where(CategorySubscription.user_id == bob.id))).all()
        assert bob.announcements_muted and modes == [SubscriptionMode.MUTE.value]
