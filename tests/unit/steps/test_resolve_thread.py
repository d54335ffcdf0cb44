"""resolve_thread: a reply+<token> address places the message under the post its verified token names; mail to
a category address threads by In-Reply-To, then References, else starts a topic. Nobody posts into the
announcements category, and a reply to a whole digest is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import ANNOUNCEMENTS_SLUG, Category, Disposition, MessageRef, Post, User
from qaflow_mail.db.queries import DIGEST_REF_KIND, add_category
from qaflow_mail.mail.addresses import Announce, NewTopic, Reply
from qaflow_mail.mail.tokens import InvalidToken, TokenError, TokenKind, sign, verify
from qaflow_mail.pipeline.steps.resolve_thread import resolve_thread
from qaflow_mail.replies import ANNOUNCEMENTS_ARE_PUBLISHED, BAD_TOKEN, DIGEST_REPLY, UNKNOWN_RECIPIENT
from tests.unit.steps.conftest import NOW, SECRET, MakeContext, add_post, assert_refused, passed, token

ROOT = "root-1@example.org"


@pytest.fixture
async def root(session: AsyncSession, alice: User, general: Category) -> Post:
    return await add_post(session, author=alice, category=general, message_id=ROOT)


def tampered(value: str) -> str:
    """The same token with one character of its signature changed (still well-formed base32)."""
    changed = "a" if value[-2] != "a" else "b"
    forged = value[:-2] + changed + value[-1]
    with pytest.raises(InvalidToken) as caught:
        verify(forged, kind=TokenKind.REPLY, secrets=[SECRET], today=NOW.date(), max_age_days=None)
    assert caught.value.reason is TokenError.TAMPERED
    return forged


# --- reply+<token>@ -----------------------------------------------------------------------------------------------


async def test_a_valid_reply_token_places_the_message_under_its_post(
    make_context: MakeContext, root: Post, general: Category, bob: User
) -> None:
    ctx = make_context(destination=Reply(token(TokenKind.REPLY, root.id, bob.id)))

    out = passed(await resolve_thread(ctx))

    assert out.parent is root
    assert out.category is not None and out.category.id == general.id
    assert out.token_ids == (root.id, bob.id)
    assert out.candidates == ()


async def test_a_tampered_reply_token_is_refused(make_context: MakeContext, root: Post, bob: User) -> None:
    good = token(TokenKind.REPLY, root.id, bob.id)

    result = assert_refused(await resolve_thread(make_context(destination=Reply(tampered(good)))), BAD_TOKEN)

    assert result.disposition == Disposition.REJECTED
    assert result.notify_sender


async def test_a_token_signed_with_another_secret_is_refused(make_context: MakeContext, root: Post,
                                                             bob: User) -> None:
    forged = token(TokenKind.REPLY, root.id, bob.id, secret=SECRET + "-guessed")

    assert_refused(await resolve_thread(make_context(destination=Reply(forged))), BAD_TOKEN)


async def test_an_expired_reply_token_is_refused(make_context: MakeContext, root: Post, bob: User) -> None:
    ttl = make_context().deps.settings.tokens.reply_ttl_days
    old = sign(TokenKind.REPLY, (root.id, bob.id), secret=SECRET, issued=NOW.date() - timedelta(days=ttl + 1))

    assert_refused(await resolve_thread(make_context(destination=Reply(old))), BAD_TOKEN)


async def test_a_token_of_another_kind_is_refused(make_context: MakeContext, root: Post, bob: User) -> None:
    unsubscribe = token(TokenKind.UNSUBSCRIBE, root.id, bob.id)

    assert_refused(await resolve_thread(make_context(destination=Reply(unsubscribe))), BAD_TOKEN)


async def test_a_token_naming_no_stored_post_is_refused(make_context: MakeContext, root: Post, bob: User) -> None:
    assert_refused(await resolve_thread(make_context(destination=Reply(token(TokenKind.REPLY, root.id + 100,
                                                                             bob.id)))), BAD_TOKEN)


async def test_a_reply_token_into_announcements_is_refused(
    make_context: MakeContext, session: AsyncSession, alice: User, bob: User
) -> None:
    announcements = await add_category(session, slug=ANNOUNCEMENTS_SLUG, name="Announcements",
                                       allow_strangers=False)
    news = await add_post(session, author=alice, category=announcements, message_id="news-1@example.org")

    result = await resolve_thread(make_context(destination=Reply(token(TokenKind.REPLY, news.id, bob.id))))

    assert_refused(result, ANNOUNCEMENTS_ARE_PUBLISHED)


# --- <slug>@ --------------------------------------------------------------------------------------------------------


async def test_a_message_without_threading_headers_starts_a_topic(make_context: MakeContext,
                                                                  general: Category) -> None:
    out = passed(await resolve_thread(make_context(destination=NewTopic("general"))))

    assert out.category is not None and out.category.id == general.id
    assert out.parent is None
    assert out.token_ids == () and out.candidates == ()


async def test_in_reply_to_a_stored_post_threads_under_it(make_context: MakeContext, root: Post) -> None:
    ctx = make_context({"In-Reply-To": f"<{ROOT}>", "References": f"<{ROOT}>"}, destination=NewTopic("general"))

    out = passed(await resolve_thread(ctx))

    assert out.parent is root
    assert out.token_ids == ()


async def test_a_thread_goes_to_its_own_category_whatever_the_address(
    make_context: MakeContext, session: AsyncSession, root: Post, general: Category
) -> None:
    other = await add_category(session, slug="other", name="Other", allow_strangers=True)
    ctx = make_context({"In-Reply-To": f"<{ROOT}>"}, destination=NewTopic(other.slug))

    out = passed(await resolve_thread(ctx))

    assert out.parent is root
    assert out.category is not None and out.category.id == general.id


async def test_references_thread_when_in_reply_to_is_unknown(make_context: MakeContext, root: Post) -> None:
    ctx = make_context({"In-Reply-To": "<missing-2@example.org>", "References": f"<{ROOT}> <missing-2@example.org>"},
                       destination=NewTopic("general"))

    out = passed(await resolve_thread(ctx))

    assert out.parent is root
    assert out.candidates == ("missing-2@example.org",)  # it moves under the nearer one if that arrives


async def test_a_reply_to_an_unknown_message_starts_a_topic_that_waits_for_it(
    make_context: MakeContext, general: Category
) -> None:
    ctx = make_context({"In-Reply-To": "<missing-1@example.org>"}, destination=NewTopic("general"))

    out = passed(await resolve_thread(ctx))

    assert out.parent is None
    assert out.category is not None and out.category.id == general.id
    assert out.candidates == ("missing-1@example.org",)


async def test_an_unknown_category_is_refused(make_context: MakeContext, general: Category) -> None:
    assert_refused(await resolve_thread(make_context(destination=NewTopic("nowhere"))), UNKNOWN_RECIPIENT)


async def test_a_new_topic_in_announcements_is_refused(make_context: MakeContext, session: AsyncSession) -> None:
    await add_category(session, slug=ANNOUNCEMENTS_SLUG, name="Announcements", allow_strangers=False)

    result = await resolve_thread(make_context(destination=NewTopic(ANNOUNCEMENTS_SLUG)))

    assert_refused(result, ANNOUNCEMENTS_ARE_PUBLISHED)


async def test_a_reply_to_a_whole_digest_is_refused(make_context: MakeContext, session: AsyncSession,
                                                    general: Category) -> None:
    session.add(MessageRef(message_id="digest-7@forum.test", post_id=None, user_id=None, kind=DIGEST_REF_KIND))
    await session.flush()
    ctx = make_context({"In-Reply-To": "<digest-7@forum.test>"}, destination=NewTopic("general"))

    assert_refused(await resolve_thread(ctx), DIGEST_REPLY)


async def test_other_destinations_are_a_programming_error(make_context: MakeContext) -> None:
    with pytest.raises(TypeError):
        await resolve_thread(make_context(destination=Announce()))
