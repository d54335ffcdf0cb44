"""Joining and leaving by mail end to end over loopback SMTP: double opt-in, no mail-bombing, -request@ commands."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from qaflow_mail.config import AnnounceSettings, Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import CategorySubscription, SubscriptionMode, User, UserStatus
from qaflow_mail.outbound.sender import sending
from qaflow_mail.server.app import Running
from tests.fanout import delivered, fanout_done
from tests.sink import SinkMessage, SmtpSink
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, NEWCOMER, VICTIM = "alice@example.org", "newcomer@example.net", "victim@example.com"
OUR_MTA = "mx.forum.test"
# What our MTA writes above a message whose From domain passed DMARC: the one thing that lets a -request@ mode or
# notify change through without a confirmation.
AUTHENTICATED = {"Authentication-Results": f"{OUR_MTA}; dkim=pass header.d=example.org; "
                                           "dmarc=pass header.from=example.org"}


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    return dataclasses.replace(
        settings,
        outbound=dataclasses.replace(settings.outbound, **sink.as_relay()),
        announce=dataclasses.replace(AnnounceSettings(), trusted_authserv_id=OUR_MTA),
    )


@pytest.fixture
async def forum(gateway: Running) -> Running:
    now = datetime.now(UTC)
    async with gateway.deps.sessions() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
    await gateway.deps.categories.reload()
    return gateway


async def deliver(run: Running, sink: SmtpSink, expected: int) -> list[SinkMessage]:
    return await delivered(run.deps, sink, expected)


async def mail(run: Running, *, sender: str, to: str, subject: str = "", body: str = "",
               headers: dict[str, str] | None = None, message_id: str | None = None) -> int | None:
    message = make_mail(sender=sender, to=to, subject=subject, body=body, headers=headers, message_id=message_id)
    return (await send(run.smtp_port, message, mail_from=sender.rpartition("<")[2].rstrip(">"),
                       rcpt_tos=[to])).data_code


def reply_to(message: SinkMessage) -> str:
    return str(message.parsed()["Reply-To"].addresses[0].addr_spec)


async def subscription(run: Running, email: str) -> tuple[User | None, str | None]:
    async with run.deps.sessions() as session:
        user = await queries.user_by_email(session, email)
        mode = None if user is None else await session.scalar(
            select(CategorySubscription.mode).where(CategorySubscription.user_id == user.id))
    return user, mode


async def test_a_stranger_joins_confirms_gets_the_next_post_and_leaves(forum: Running, sink: SmtpSink) -> None:
    # The request changes nothing: a confirmation goes to the From address.
    assert await mail(forum, sender=f"New Comer <{NEWCOMER}>", to=f"general-join@{DOMAIN}", subject="join") == 250
    [confirmation] = await deliver(forum, sink, 1)
    assert confirmation.rcpt_tos == (NEWCOMER,)
    assert confirmation.mail_from in ("", "<>")  # a stranger's confirmation bounces nowhere
    assert confirmation.parsed()["Auto-Submitted"] == "auto-replied"
    confirm_at = reply_to(confirmation)
    assert confirm_at.startswith("confirm+")
    assert await subscription(forum, NEWCOMER) == (None, None)

    # Replying confirms; the stranger becomes an active user named from their From, following "each" post.
    assert await mail(forum, sender=NEWCOMER, to=confirm_at, subject="Re: confirm", body="yes") == 250
    [welcome] = await deliver(forum, sink, 1)
    assert "Welcome to General" in str(welcome.parsed()["Subject"])
    user, mode = await subscription(forum, NEWCOMER)
    assert user is not None and user.status == UserStatus.ACTIVE and user.display_name == "New Comer"
    assert mode == SubscriptionMode.EACH
    # The confirmation works once.
    assert await mail(forum, sender=NEWCOMER, to=confirm_at, subject="Re: confirm", body="again") == 550

    # The next post reaches them.
    assert await mail(forum, sender=ALICE, to=GENERAL, subject="Hello all", body="First!") == 250
    [post] = await deliver(forum, sink, 1)
    assert post.rcpt_tos == (NEWCOMER,)

    # Leaving takes a confirmation as well, then the subscription is muted.
    assert await mail(forum, sender=NEWCOMER, to=f"general-leave@{DOMAIN}") == 250
    [leave_confirmation] = await deliver(forum, sink, 1)
    assert (await subscription(forum, NEWCOMER))[1] == SubscriptionMode.EACH  # not before the confirmation
    assert await mail(forum, sender=NEWCOMER, to=reply_to(leave_confirmation), body="ok") == 250
    await deliver(forum, sink, 1)
    assert (await subscription(forum, NEWCOMER))[1] == SubscriptionMode.MUTE
    delivered = len(sink.messages)
    assert await mail(forum, sender=ALICE, to=GENERAL, subject="Anyone?", body="Second") == 250
    await fanout_done(forum.deps)
    async with sending(forum.deps) as sender:
        await sender.flush()
    assert len(sink.messages) == delivered  # nobody follows General any more


async def test_a_forged_join_sends_its_victim_one_confirmation_and_confirms_nothing(
    forum: Running, sink: SmtpSink
) -> None:
    for attempt in range(3):
        assert await mail(forum, sender=VICTIM, to=f"general-join@{DOMAIN}", subject=f"join {attempt}") == 250
    [confirmation] = await deliver(forum, sink, 1)
    assert confirmation.rcpt_tos == (VICTIM,)
    # Someone else replying with the token (it was forwarded, or guessed from a leak) confirms nothing.
    assert await mail(forum, sender="mallory@example.net", to=reply_to(confirmation), body="yes") == 550
    assert await subscription(forum, VICTIM) == (None, None)


async def test_automatic_mail_never_triggers_a_confirmation(forum: Running, sink: SmtpSink) -> None:
    assert await mail(forum, sender=VICTIM, to=f"general-join@{DOMAIN}", subject="Out of office",
                      headers={"Auto-Submitted": "auto-replied"}) == 250
    await fanout_done(forum.deps)
    async with sending(forum.deps) as sender:
        await sender.flush()
    assert sink.messages == []


async def test_request_commands_are_answered_in_one_mail(forum: Running, sink: SmtpSink) -> None:
    body = "mode daily\nnotify all\nstatus\n\n-- \nAlice\nhelp\n"
    assert await mail(forum, sender=ALICE, to=f"general-request@{DOMAIN}", subject="Re: commands", body=body,
                      headers=AUTHENTICATED) == 250
    [answer] = await deliver(forum, sink, 1)
    text = answer.parsed().get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "> mode daily\ndone: General is now \"daily\"" in text
    assert "> notify all\ndone: replies by mail are now \"all\"" in text
    assert "you follow general (daily)" in text
    assert "> help" not in text  # after the signature: not a command
    async with forum.deps.sessions() as session:
        alice = await queries.user_by_email(session, ALICE)
    assert alice is not None and alice.notify_replies == "all"


async def test_a_stranger_refused_at_a_members_only_category_is_told_how_to_join(forum: Running) -> None:
    message = make_mail(sender=VICTIM, to=GENERAL, subject="Question", body="Hi")
    conv = await send(forum.smtp_port, message, mail_from=VICTIM, rcpt_tos=[GENERAL])
    assert conv.data is not None and conv.data[0] == 550
    assert f"general-join@{DOMAIN}" in conv.data[1] and "register" not in conv.data[1]
    assert "http://forum.test/c/general" in conv.data[1]  # General's own page, with its "Follow by email"


async def test_rotating_tokens_voids_every_earlier_unsubscribe_link(forum: Running) -> None:
    from qaflow_mail.mail.tokens import TokenKind, sign, unsubscribe_ids
    from qaflow_mail.services.subscriptions import UnsubscribeStatus, check_unsubscribe_token, rotate_tokens

    settings, now = forum.deps.settings, datetime.now(UTC)
    async with forum.deps.sessions() as session, session.begin():
        alice = await queries.user_by_email(session, ALICE)
        general = await queries.category_by_slug(session, "general")
        assert alice is not None and general is not None
        old = sign(TokenKind.UNSUBSCRIBE, unsubscribe_ids(alice.id, general.id, alice.token_generation),
                   secret=settings.tokens.secret, issued=now.date())
        assert (await check_unsubscribe_token(session, old, settings, now)).status is UnsubscribeStatus.VALID
        generation = rotate_tokens(alice)
        new = sign(TokenKind.UNSUBSCRIBE, unsubscribe_ids(alice.id, general.id, generation),
                   secret=settings.tokens.secret, issued=now.date())
        assert (await check_unsubscribe_token(session, old, settings, now)).status is UnsubscribeStatus.INVALID
        assert (await check_unsubscribe_token(session, new, settings, now)).status is UnsubscribeStatus.VALID


async def test_a_forged_mode_or_notify_change_waits_for_the_owner_of_the_address(
    forum: Running, sink: SmtpSink
) -> None:
    async with forum.deps.sessions() as session, session.begin():
        alice = await queries.user_by_email(session, ALICE)
        general = await queries.category_by_slug(session, "general")
        assert alice is not None and general is not None
        session.add(CategorySubscription(user_id=alice.id, category_id=general.id, mode=SubscriptionMode.EACH.value,
                                         created_at=datetime.now(UTC)))
    # Anyone can put Alice's address in a From; without our MTA's word for it, nothing changes yet.
    forged = make_mail(sender=ALICE, to=f"general-request@{DOMAIN}", subject="mode weekly",
                       body="notify off\nstatus\nhelp\n")
    conv = await send(forum.smtp_port, forged, mail_from="mallory@example.net", rcpt_tos=[f"general-request@{DOMAIN}"])
    assert conv.data_code == 250
    delivered = await deliver(forum, sink, 3)
    assert {m.rcpt_tos for m in delivered} == {(ALICE,)}  # the answer and both confirmations
    [answer] = [m for m in delivered if "Confirm:" not in str(m.parsed()["Subject"])]
    confirmations = [m for m in delivered if m is not answer]
    text = answer.parsed().get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.count("a confirmation was sent to you in a separate email") == 2
    assert "you follow general (each)" in text and "> help" in text  # status and help: answered at once
    user, mode = await subscription(forum, ALICE)
    assert user is not None and mode == SubscriptionMode.EACH and user.notify_replies == "direct"
    subjects = {str(m.parsed()["Subject"]): m for m in confirmations}
    assert set(subjects) == {"[QAFlow Test] Confirm: General weekly", "[QAFlow Test] Confirm: replies by mail off"}

    # Someone else replying to the confirmation does nothing; Alice replying does it.
    mode_confirmation = subjects["[QAFlow Test] Confirm: General weekly"]
    assert await mail(forum, sender="mallory@example.net", to=reply_to(mode_confirmation), body="yes") == 550
    assert await mail(forum, sender=ALICE, to=reply_to(mode_confirmation), body="yes") == 250
    [done] = await deliver(forum, sink, 1)
    assert "weekly digests of General" in done.parsed().get_body(("plain",)).get_content()
    user, mode = await subscription(forum, ALICE)
    assert user is not None and mode == SubscriptionMode.WEEKLY and user.notify_replies == "direct"
    assert await mail(forum, sender=ALICE, to=reply_to(subjects["[QAFlow Test] Confirm: replies by mail off"]),
                      body="yes") == 250
    await deliver(forum, sink, 1)
    user, _mode = await subscription(forum, ALICE)
    assert user is not None and user.notify_replies == "off"


async def test_an_authentication_results_header_written_by_someone_else_is_no_proof(
    forum: Running, sink: SmtpSink
) -> None:
    # Only the topmost Authentication-Results counts, and only our MTA's: the sender's own is ignored.
    spoofed = {"Authentication-Results": "mx.elsewhere.example; dmarc=pass header.from=example.org"}
    assert await mail(forum, sender=ALICE, to=f"general-request@{DOMAIN}", body="notify all",
                      headers=spoofed) == 250
    subjects = sorted(str(m.parsed()["Subject"]) for m in await deliver(forum, sink, 2))
    assert "[QAFlow Test] Confirm: replies by mail all" in subjects
    user, _mode = await subscription(forum, ALICE)
    assert user is not None and user.notify_replies == "direct"
