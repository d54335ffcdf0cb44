"""authorize_sender / admit_imported_author: who is writing, and may they post here? Members post anywhere; an
unknown sender becomes a staged user only in a category open to strangers, and is refused elsewhere with how to
join that category; a reply token works only for the subscriber it was sent to. An archive import welcomes every
author."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, Disposition, Source, User, UserAddress, UserStatus
from qaflow_mail.pipeline.steps.authorize_sender import admit_imported_author, authorize_sender
from qaflow_mail.replies import NO_FROM, NOT_TOKEN_OWNER, SENDER_NOT_ALLOWED
from tests.unit.steps.conftest import ALICE, DOMAIN, NOW, STRANGER, MakeContext, assert_refused, passed

FROM_STRANGER = {"From": f"Stan Ger <{STRANGER}>"}
# What a stranger at General (members only, on the web) is told: General's own -join address and its page.
JOIN_GENERAL = SENDER_NOT_ALLOWED.with_text(
    f"Only members may post to general@{DOMAIN}; to join, send an empty email to general-join@{DOMAIN} and reply "
    f"to the confirmation, or use \"Follow by email\" on http://{DOMAIN}/c/general"
)


async def test_a_member_may_post_in_a_closed_category(make_context: MakeContext, alice: User,
                                                      general: Category) -> None:
    ctx = make_context(category=general)

    out = passed(await authorize_sender(ctx))

    assert out.author is alice
    assert out.category is general


async def test_a_member_writing_from_a_further_address_is_that_member(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    session.add(UserAddress(user_id=alice.id, email="alice@work.example"))
    await session.flush()

    out = passed(await authorize_sender(make_context({"From": "Alice <Alice@Work.Example>"}, category=general)))

    assert out.author is alice


async def test_an_unknown_sender_in_a_closed_category_is_refused(
    make_context: MakeContext, session: AsyncSession, general: Category
) -> None:
    result = assert_refused(await authorize_sender(make_context(FROM_STRANGER, category=general)), JOIN_GENERAL)

    assert result.notify_sender
    assert "register" not in result.reply.text
    assert await queries.user_by_email(session, STRANGER) is None  # nobody was created


async def test_an_unknown_sender_in_an_open_category_becomes_a_staged_user(
    make_context: MakeContext, session: AsyncSession, open_category: Category
) -> None:
    out = passed(await authorize_sender(make_context(FROM_STRANGER, category=open_category)))

    assert out.author is not None
    assert out.author.email == STRANGER
    assert out.author.display_name == "Stan Ger"
    assert out.author.status == UserStatus.STAGED
    assert out.author.created_at == NOW
    assert await queries.user_by_email(session, STRANGER) is out.author


async def test_a_staged_user_may_not_post_outside_an_open_category(
    make_context: MakeContext, session: AsyncSession, general: Category
) -> None:
    await queries.add_user(session, email=STRANGER, status=UserStatus.STAGED, now=NOW)

    assert_refused(await authorize_sender(make_context(FROM_STRANGER, category=general)), JOIN_GENERAL)


async def test_a_stranger_at_a_private_category_is_told_its_join_address_but_no_page(
    make_context: MakeContext, session: AsyncSession
) -> None:
    staff = await queries.add_category(session, slug="staff", name="Staff <b>", allow_strangers=False)
    staff.private = True

    result = assert_refused(await authorize_sender(make_context(FROM_STRANGER, category=staff)),
                            SENDER_NOT_ALLOWED.with_text(
                                f"Only members may post to staff@{DOMAIN}; to join, send an empty email to "
                                f"staff-join@{DOMAIN} and reply to the confirmation"))

    assert "/c/staff" not in result.reply.text and "<b>" not in result.reply.text


async def test_a_staged_user_may_post_again_in_an_open_category(
    make_context: MakeContext, session: AsyncSession, open_category: Category
) -> None:
    staged = await queries.add_user(session, email=STRANGER, status=UserStatus.STAGED, now=NOW)

    out = passed(await authorize_sender(make_context(FROM_STRANGER, category=open_category)))

    assert out.author is staged


@pytest.mark.parametrize("allow_strangers", [False, True], ids=["closed", "open"])
async def test_a_disabled_user_is_refused_everywhere(
    make_context: MakeContext, session: AsyncSession, alice: User, allow_strangers: bool
) -> None:
    alice.status = UserStatus.DISABLED
    category = await queries.add_category(session, slug="help", name="Help", allow_strangers=allow_strangers)

    assert_refused(await authorize_sender(make_context(category=category)), SENDER_NOT_ALLOWED)


async def test_mail_without_a_from_address_is_refused(make_context: MakeContext, open_category: Category) -> None:
    result = assert_refused(await authorize_sender(make_context({"From": None}, category=open_category)), NO_FROM)

    assert result.disposition == Disposition.REJECTED
    assert not result.notify_sender


async def test_the_token_owner_may_reply(make_context: MakeContext, alice: User, general: Category) -> None:
    out = passed(await authorize_sender(make_context(category=general, token_ids=(1, alice.id))))

    assert out.author is alice


async def test_a_reply_token_used_by_another_member_is_refused(
    make_context: MakeContext, alice: User, bob: User, general: Category
) -> None:
    ctx = make_context({"From": f"Bob <{bob.email}>"}, category=general, token_ids=(1, alice.id))

    result = assert_refused(await authorize_sender(ctx), NOT_TOKEN_OWNER)

    assert str(alice.id) in result.reason and bob.email in result.reason


async def test_a_reply_token_used_by_a_stranger_is_refused_even_where_strangers_post(
    make_context: MakeContext, session: AsyncSession, alice: User, open_category: Category
) -> None:
    ctx = make_context(FROM_STRANGER, category=open_category, token_ids=(1, alice.id))

    assert_refused(await authorize_sender(ctx), NOT_TOKEN_OWNER)
    assert await queries.user_by_email(session, STRANGER) is None


async def test_a_staged_user_may_use_their_own_reply_token_in_a_closed_category(
    make_context: MakeContext, session: AsyncSession, general: Category
) -> None:
    staged = await queries.add_user(session, email=STRANGER, status=UserStatus.STAGED, now=NOW)

    out = passed(await authorize_sender(make_context(FROM_STRANGER, category=general, token_ids=(1, staged.id))))

    assert out.author is staged


async def test_an_import_admits_strangers_in_any_category(
    make_context: MakeContext, session: AsyncSession, general: Category
) -> None:
    ctx = make_context(FROM_STRANGER, category=general, source=Source.IMPORT)

    out = passed(await admit_imported_author(ctx))

    assert out.author is not None
    assert out.author.email == STRANGER
    assert out.author.status == UserStatus.STAGED
    assert await queries.user_by_email(session, STRANGER) is out.author


async def test_an_import_keeps_members_as_themselves(make_context: MakeContext, alice: User,
                                                     general: Category) -> None:
    out = passed(await admit_imported_author(make_context(category=general, source=Source.IMPORT)))

    assert out.author is alice and out.author.email == ALICE


async def test_an_import_still_refuses_disabled_users(make_context: MakeContext, alice: User,
                                                      general: Category) -> None:
    alice.status = UserStatus.DISABLED

    result = await admit_imported_author(make_context(category=general, source=Source.IMPORT))

    assert_refused(result, SENDER_NOT_ALLOWED)
