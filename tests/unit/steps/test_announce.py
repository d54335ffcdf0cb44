"""announce: authorize_announcer lets only an active admin announce and says how far the mail proves it is them;
publish_or_hold publishes a proven announcement and holds any other for a confirmation by mail;
apply_confirmation publishes a held one when its admin answers PUBLISH."""

from __future__ import annotations

import dataclasses
import re

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    ANNOUNCEMENTS_SLUG,
    Announcement,
    Disposition,
    FanoutJob,
    FanoutKind,
    InboundMessage,
    Outbox,
    OutboxKind,
    Post,
    Topic,
    User,
    UserStatus,
)
from qaflow_mail.deps import Deps
from qaflow_mail.mail.addresses import Announce, Confirm
from qaflow_mail.mail.content import extract_content
from qaflow_mail.mail.dkim_check import AuthMethod
from qaflow_mail.mail.tokens import TokenKind
from qaflow_mail.outbound.announcements import AnnouncementStatus, VerifiedBy
from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.pipeline.steps.announce import apply_confirmation, authorize_announcer, publish_or_hold
from qaflow_mail.replies import (
    BAD_CONFIRMATION,
    CONFIRMATION_USED,
    NOT_ADMIN,
    NOT_CONFIRMED,
    NOT_THE_ADMIN,
    NOT_VERIFIED,
    OK,
)
from tests.unit.steps.conftest import (
    ALICE,
    BOB,
    DOMAIN,
    NOW,
    SECRET,
    MakeContext,
    assert_refused,
    passed,
    token,
    tuned,
)
from tests.unit.test_dkim_check import dns_for, message, shared_key
from tests.unit.test_dkim_check import sign as dkim_sign

ANNOUNCE_TO = f"announce@{DOMAIN}"


@pytest.fixture
async def admin(session: AsyncSession) -> User:
    return await queries.add_user(session, email=ALICE, display_name="Alice Admin", is_admin=True, now=NOW)


@pytest.fixture
def dkim_deps(deps: Deps) -> Deps:
    """Deps whose DKIM key lookups answer from the test key (no DNS)."""
    return dataclasses.replace(deps, dkim_dnsfunc=dns_for({"test._domainkey.example.org": shared_key().public_txt}))


def announcement(make_context: MakeContext, deps: Deps, *, signed: bool = False, sender: str = f"Alice Admin <{ALICE}>",
                 **fields: object) -> Context:
    raw = message(sender=sender)
    if signed:
        raw = dkim_sign(raw, domain="example.org")
    return make_context(raw, destination=Announce(), recipient=ANNOUNCE_TO, deps=deps, **fields)


async def announcer(ctx: Context) -> Context:
    """`ctx` as publish_or_hold receives it: the announcer authorized and the text extracted."""
    out = passed(await authorize_announcer(ctx))
    return dataclasses.replace(out, content=extract_content(out.parsed))


async def outbox(session: AsyncSession, kind: OutboxKind) -> list[Outbox]:
    return list((await session.scalars(select(Outbox).where(Outbox.kind == kind.value).order_by(Outbox.id))).all())


async def announcements(session: AsyncSession) -> list[Announcement]:
    return list((await session.scalars(select(Announcement).order_by(Announcement.id))).all())


# --- authorize_announcer ------------------------------------------------------------------------------------------


async def test_an_admin_is_the_announcer(make_context: MakeContext, dkim_deps: Deps, admin: User) -> None:
    out = passed(await authorize_announcer(announcement(make_context, dkim_deps)))

    assert out.author is admin
    assert out.announce_verdict is not None and not out.announce_verdict.passed  # unsigned: nothing proven


async def test_a_signed_announcement_is_proven_by_dkim(make_context: MakeContext, dkim_deps: Deps,
                                                       admin: User) -> None:
    out = passed(await authorize_announcer(announcement(make_context, dkim_deps, signed=True)))

    assert out.author is admin
    assert out.announce_verdict is not None
    assert out.announce_verdict.passed and out.announce_verdict.method is AuthMethod.DKIM


async def test_a_member_who_is_no_admin_is_refused(make_context: MakeContext, dkim_deps: Deps,
                                                   session: AsyncSession) -> None:
    await queries.add_user(session, email=BOB, now=NOW)

    result = await authorize_announcer(announcement(make_context, dkim_deps, signed=True, sender=f"Bob <{BOB}>"))

    assert_refused(result, NOT_ADMIN)
    assert isinstance(result, Outcome) and not result.notify_sender  # the From may be forged: never answered


async def test_an_unknown_sender_is_refused(make_context: MakeContext, dkim_deps: Deps) -> None:
    assert_refused(await authorize_announcer(announcement(make_context, dkim_deps)), NOT_ADMIN)


async def test_an_admin_who_is_no_longer_active_is_refused(make_context: MakeContext, dkim_deps: Deps,
                                                           admin: User) -> None:
    admin.status = UserStatus.DISABLED

    assert_refused(await authorize_announcer(announcement(make_context, dkim_deps, signed=True)), NOT_ADMIN)


async def test_require_dkim_refuses_an_unsigned_announcement(make_context: MakeContext, dkim_deps: Deps,
                                                             admin: User) -> None:
    strict = tuned(dkim_deps, "announce", require="dkim")

    assert_refused(await authorize_announcer(announcement(make_context, strict)), NOT_VERIFIED)


async def test_require_confirm_treats_even_a_signed_announcement_as_unproven(
    make_context: MakeContext, dkim_deps: Deps, admin: User
) -> None:
    confirm_all = tuned(dkim_deps, "announce", require="confirm")

    out = passed(await authorize_announcer(announcement(make_context, confirm_all, signed=True)))

    assert out.announce_verdict is not None and not out.announce_verdict.passed


# --- publish_or_hold ----------------------------------------------------------------------------------------------


async def test_an_admin_without_dkim_is_held_and_sent_a_confirmation(
    make_context: MakeContext, dkim_deps: Deps, session: AsyncSession, admin: User
) -> None:
    ctx = await announcer(announcement(make_context, dkim_deps))

    result = await publish_or_hold(ctx)

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.HELD
    assert result.reply == OK and result.post_id is None
    assert "awaits confirmation" in result.reason
    [held] = await announcements(session)
    assert (held.author_id, held.status, held.post_id) == (admin.id, AnnouncementStatus.AWAITING_CONFIRMATION.value,
                                                           None)
    [confirmation] = await outbox(session, OutboxKind.CONFIRMATION)
    assert (confirmation.recipient, confirmation.user_id, confirmation.announcement_id) == (ALICE, admin.id, held.id)
    assert re.search(rb"Reply-To: confirm\+[a-z2-7]+@" + DOMAIN.encode(), confirmation.raw)
    assert await session.scalar(select(Post.id)) is None  # nothing published


async def test_past_the_confirmation_rate_an_announcement_is_held_silently(
    make_context: MakeContext, dkim_deps: Deps, session: AsyncSession, admin: User
) -> None:
    ctx = await announcer(announcement(make_context, tuned(dkim_deps, "announce", confirm_rate_per_hour=0)))

    result = await publish_or_hold(ctx)

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.HELD
    assert "confirmation rate limit" in result.reason
    assert [a.status for a in await announcements(session)] == [AnnouncementStatus.HELD.value]
    assert await outbox(session, OutboxKind.CONFIRMATION) == []


async def test_a_proven_announcement_is_published_and_broadcast(
    make_context: MakeContext, dkim_deps: Deps, session: AsyncSession, admin: User
) -> None:
    await queries.add_user(session, email=BOB, now=NOW)
    ctx = await announcer(announcement(make_context, dkim_deps, signed=True))

    result = await publish_or_hold(ctx)

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.ACCEPTED and result.reply == OK
    assert result.post_id is not None
    post = await session.get(Post, result.post_id)
    assert post is not None and post.author_id == admin.id and post.subject == "Maintenance tonight"
    topic = await session.get(Topic, post.topic_id)
    category = await queries.category_by_slug(session, ANNOUNCEMENTS_SLUG)
    assert topic is not None and category is not None and topic.category_id == category.id
    [published] = await announcements(session)
    assert (published.status, published.verified_by, published.post_id) == (
        AnnouncementStatus.PUBLISHED.value, VerifiedBy.DKIM.value, post.id)
    # The broadcast is a fan-out job written in the same transaction (the worker writes bob's outbox row later).
    job = await session.scalar(select(FanoutJob).where(FanoutJob.kind == FanoutKind.ANNOUNCEMENT.value))
    assert job is not None and job.target_id == published.id and job.finished_at is None
    assert await outbox(session, OutboxKind.ANNOUNCEMENT) == []
    assert "2 recipients" in result.reason  # the admin and bob


# --- apply_confirmation -------------------------------------------------------------------------------------------


async def held_announcement(make_context: MakeContext, deps: Deps, session: AsyncSession) -> tuple[Announcement, str]:
    """Hold an unsigned announcement as the ANNOUNCE route would, record its raw message as ingest does, and
    return it with the confirm token its confirmation mail carries."""
    ctx = await announcer(announcement(make_context, deps))
    result = await publish_or_hold(ctx)
    assert isinstance(result, Outcome) and result.disposition == Disposition.HELD
    session.add(InboundMessage(message_id=ctx.parsed.message_id, sha256=ctx.parsed.sha256, from_address=ALICE,
                               received_at=NOW, disposition=Disposition.HELD.value, raw=ctx.raw))
    await session.flush()
    await session.flush()  # the link to the inbound row is written by the flush after the one that inserts it
    [held] = await announcements(session)
    assert held.inbound_id is not None
    [confirmation] = await outbox(session, OutboxKind.CONFIRMATION)
    found = re.search(rb"confirm\+([a-z2-7]+)@", confirmation.raw)
    assert found is not None
    return held, found.group(1).decode()


def confirmation_reply(make_context: MakeContext, confirm_token: str, *, sender: str = ALICE,
                       body: str = "PUBLISH\n\n> Please confirm the announcement.\n", n: int = 1) -> Context:
    return make_context({"From": sender, "To": f"confirm+{confirm_token}@{DOMAIN}", "Subject": "Re: Confirm",
                         "Message-ID": f"<confirm-reply-{n}@example.org>"},
                        body=body, destination=Confirm(confirm_token), recipient=f"confirm+{confirm_token}@{DOMAIN}")


async def test_publish_from_the_admin_publishes_the_held_announcement(
    make_context: MakeContext, dkim_deps: Deps, session: AsyncSession, admin: User
) -> None:
    held, confirm_token = await held_announcement(make_context, dkim_deps, session)

    result = await apply_confirmation(confirmation_reply(make_context, confirm_token))

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.ACCEPTED and result.reply == OK
    await session.refresh(held)
    assert held.status == AnnouncementStatus.PUBLISHED.value
    assert held.verified_by == VerifiedBy.CONFIRMATION.value
    assert held.post_id is not None and held.confirmed_at == NOW
    post = await session.get(Post, held.post_id)
    assert post is not None and "The forum moves tonight." in post.body_text


async def test_a_confirmation_works_once(make_context: MakeContext, dkim_deps: Deps, session: AsyncSession,
                                         admin: User) -> None:
    _held, confirm_token = await held_announcement(make_context, dkim_deps, session)
    first = await apply_confirmation(confirmation_reply(make_context, confirm_token))
    assert isinstance(first, Outcome) and first.disposition == Disposition.ACCEPTED

    again = await apply_confirmation(confirmation_reply(make_context, confirm_token, n=2))

    assert_refused(again, CONFIRMATION_USED)


async def test_a_reply_without_publish_publishes_nothing(
    make_context: MakeContext, dkim_deps: Deps, session: AsyncSession, admin: User
) -> None:
    held, confirm_token = await held_announcement(make_context, dkim_deps, session)

    result = await apply_confirmation(confirmation_reply(make_context, confirm_token, body="Looks fine to me.\n"))

    assert_refused(result, NOT_CONFIRMED)
    await session.refresh(held)
    assert held.status == AnnouncementStatus.AWAITING_CONFIRMATION.value


async def test_a_confirmation_from_anyone_but_the_admin_is_refused(
    make_context: MakeContext, dkim_deps: Deps, session: AsyncSession, admin: User
) -> None:
    await queries.add_user(session, email=BOB, is_admin=True, now=NOW)
    _held, confirm_token = await held_announcement(make_context, dkim_deps, session)

    assert_refused(await apply_confirmation(confirmation_reply(make_context, confirm_token, sender=BOB)),
                   NOT_THE_ADMIN)


async def test_a_bad_confirmation_token_is_refused(make_context: MakeContext, dkim_deps: Deps,
                                                   session: AsyncSession, admin: User) -> None:
    held, _confirm_token = await held_announcement(make_context, dkim_deps, session)
    forged = token(TokenKind.CONFIRM, held.id, admin.id, secret=SECRET + "-guessed")

    result = assert_refused(await apply_confirmation(confirmation_reply(make_context, forged)), BAD_CONFIRMATION)

    assert not result.notify_sender
