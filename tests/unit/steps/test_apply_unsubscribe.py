"""apply_unsubscribe: mail to unsubscribe+<token>@ mutes the subscription the token names (or the user's
announcements, category 0) and queues a confirmation to the subscriber's registered address; repeating it
changes nothing; a bad token is refused and never answered by mail."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import (
    Category,
    CategorySubscription,
    Disposition,
    Outbox,
    OutboxKind,
    SubscriptionMode,
    User,
)
from qaflow_mail.mail.addresses import Unsubscribe
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.pipeline.steps.apply_unsubscribe import apply_unsubscribe
from qaflow_mail.replies import BAD_UNSUBSCRIBE_TOKEN, OK
from tests.unit.steps.conftest import DOMAIN, NOW, SECRET, STRANGER, MakeContext, assert_refused, token


def unsubscribe_context(make_context: MakeContext, unsubscribe_token: str, **headers: str) -> Context:
    # Anyone holding the token may send it: here a stranger, so the notice must not go to the From.
    return make_context({"From": STRANGER, "Subject": "unsubscribe", **headers}, body="unsubscribe\n",
                        destination=Unsubscribe(unsubscribe_token),
                        recipient=f"unsubscribe+{unsubscribe_token}@{DOMAIN}")


async def subscription(session: AsyncSession, user: User, category: Category) -> CategorySubscription | None:
    return await session.scalar(select(CategorySubscription).where(
        CategorySubscription.user_id == user.id, CategorySubscription.category_id == category.id))


async def notices(session: AsyncSession) -> list[Outbox]:
    return list((await session.scalars(select(Outbox).order_by(Outbox.id))).all())


def assert_accepted(result: Context | Outcome, *phrases: str) -> Outcome:
    assert isinstance(result, Outcome), result
    assert result.disposition == Disposition.ACCEPTED
    assert result.reply == OK
    for phrase in phrases:
        assert phrase in result.reason, result.reason
    return result


async def test_a_valid_token_mutes_the_subscription_and_tells_the_subscriber(
    make_context: MakeContext, session: AsyncSession, bob: User, general: Category
) -> None:
    session.add(CategorySubscription(user_id=bob.id, category_id=general.id, mode=SubscriptionMode.EACH.value,
                                     created_at=NOW))
    await session.flush()

    result = await apply_unsubscribe(unsubscribe_context(make_context, token(TokenKind.UNSUBSCRIBE, bob.id,
                                                                             general.id)))

    assert_accepted(result, f"user {bob.id}", "category general", "(unsubscribed)")
    row = await subscription(session, bob, general)
    assert row is not None and row.mode == SubscriptionMode.MUTE.value
    sent = await notices(session)
    assert [(n.recipient, n.user_id, n.kind) for n in sent] == [(bob.email, bob.id, OutboxKind.NOTICE.value)]
    assert b"In-Reply-To: <msg-1@example.org>" in sent[0].raw


async def test_a_user_without_a_subscription_row_gets_a_muted_one(
    make_context: MakeContext, session: AsyncSession, bob: User, general: Category
) -> None:
    result = await apply_unsubscribe(unsubscribe_context(make_context, token(TokenKind.UNSUBSCRIBE, bob.id,
                                                                             general.id)))

    assert_accepted(result)
    row = await subscription(session, bob, general)
    assert row is not None and row.mode == SubscriptionMode.MUTE.value


async def test_repeating_it_changes_nothing_and_queues_no_second_notice(
    make_context: MakeContext, session: AsyncSession, bob: User, general: Category
) -> None:
    unsubscribe_token = token(TokenKind.UNSUBSCRIBE, bob.id, general.id)
    assert_accepted(await apply_unsubscribe(unsubscribe_context(make_context, unsubscribe_token)), "(unsubscribed)")

    again = await apply_unsubscribe(unsubscribe_context(make_context, unsubscribe_token,
                                                        **{"Message-ID": "<msg-2@example.org>"}))

    assert_accepted(again, "(already)")
    assert len(await notices(session)) == 1


async def test_category_zero_mutes_the_users_announcements(
    make_context: MakeContext, session: AsyncSession, bob: User
) -> None:
    result = await apply_unsubscribe(unsubscribe_context(make_context, token(TokenKind.UNSUBSCRIBE, bob.id, 0)))

    assert_accepted(result, "from announcements")
    await session.refresh(bob)
    assert bob.announcements_muted is True


async def test_an_old_token_still_works(make_context: MakeContext, session: AsyncSession, bob: User,
                                        general: Category) -> None:
    old = sign(TokenKind.UNSUBSCRIBE, (bob.id, general.id), secret=SECRET, issued=date(2021, 1, 1))

    assert_accepted(await apply_unsubscribe(unsubscribe_context(make_context, old)), "(unsubscribed)")


@pytest.mark.parametrize("kind", ["forged", "wrong-kind", "malformed"])
async def test_a_bad_token_is_refused_and_changes_nothing(
    make_context: MakeContext, session: AsyncSession, bob: User, general: Category, kind: str
) -> None:
    session.add(CategorySubscription(user_id=bob.id, category_id=general.id, mode=SubscriptionMode.EACH.value,
                                     created_at=NOW))
    await session.flush()
    bad = {
        "forged": token(TokenKind.UNSUBSCRIBE, bob.id, general.id, secret=SECRET + "-guessed"),
        "wrong-kind": token(TokenKind.REPLY, bob.id, general.id),
        "malformed": "not-a-token",
    }[kind]

    result = assert_refused(await apply_unsubscribe(unsubscribe_context(make_context, bad)), BAD_UNSUBSCRIBE_TOKEN)

    assert not result.notify_sender  # never answered by mail
    row = await subscription(session, bob, general)
    assert row is not None and row.mode == SubscriptionMode.EACH.value
    assert await notices(session) == []


async def test_a_token_for_a_gone_user_or_category_is_refused(
    make_context: MakeContext, session: AsyncSession, bob: User
) -> None:
    for gone in (token(TokenKind.UNSUBSCRIBE, 999, 0), token(TokenKind.UNSUBSCRIBE, bob.id, 999)):
        assert_refused(await apply_unsubscribe(unsubscribe_context(make_context, gone)), BAD_UNSUBSCRIBE_TOKEN)
    assert await notices(session) == []
