"""The loop and storm guard over loopback: two auto-responders that do not mark their mail as automatic answer
every notification they get, and one post still turns into no more than a handful; a sender flooding one topic
is held; the moderators are told once per topic and day."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    CategorySubscription,
    HeldPost,
    Outbox,
    OutboxStatus,
    Post,
    PostStatus,
    SubscriptionMode,
)
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.sender import sending
from qaflow_mail.server.app import Running, running
from tests.fanout import fanout_done
from tests.sink import SmtpSink
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
HUMAN, ADMIN = "human@example.org", "admin@example.org"
BOTS = ("away-bot@example.net", "vacation-bot@example.com")


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    return dataclasses.replace(
        settings,
        outbound=dataclasses.replace(settings.outbound, transport="smtp", smtp_host="127.0.0.1", smtp_port=sink.port,
                                     poll_interval=0.05),
    )


async def seed(run: Running) -> None:
    now = datetime.now(UTC)
    async with run.deps.sessions() as session, session.begin():
        general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_user(session, email=HUMAN, display_name="Human", now=now)
        admin = await queries.add_user(session, email=ADMIN, display_name="Admin", now=now)
        admin.is_admin = True
        for bot in BOTS:
            user = await queries.add_user(session, email=bot, display_name="Bot", now=now)
            session.add(CategorySubscription(user_id=user.id, category_id=general.id,
                                             mode=SubscriptionMode.EACH.value, created_at=now))
    await run.deps.categories.reload()


async def outbox_idle(deps: Deps) -> bool:
    async with deps.sessions() as session:
        waiting = await session.scalar(select(func.count(Outbox.id)).where(
            Outbox.status.in_([OutboxStatus.PENDING.value, OutboxStatus.SENDING.value])))
    return not waiting


async def posts(deps: Deps) -> list[Post]:
    async with deps.sessions() as session:
        return list((await session.scalars(select(Post).order_by(Post.id))).all())


async def storm_notices(deps: Deps) -> list[Outbox]:
    async with deps.sessions() as session:
        return list((await session.scalars(select(Outbox).where(Outbox.dedupe_key.like("storm:%")))).all())


async def test_two_auto_responders_never_turn_one_post_into_more_than_a_handful(
    settings: Settings, sink: SmtpSink
) -> None:
    async with running(settings) as run, sending(run.deps) as sender:
        await seed(run)
        first = make_mail(sender=HUMAN, to=GENERAL, subject="Office hours", body="Who is around this week?")
        assert (await send(run.smtp_port, first, mail_from=HUMAN, rcpt_tos=[GENERAL])).data_code == 250

        answered = 0
        deadline = time.monotonic() + 60
        while True:  # deliver, let the bots answer what they got, until nothing moves any more
            assert time.monotonic() < deadline, f"still storming after 60 s: {len(await posts(run.deps))} posts"
            await fanout_done(run.deps)
            await sender.flush()
            new, answered = sink.messages[answered:], len(sink.messages)
            replies = 0
            for message in new:
                (rcpt,) = message.rcpt_tos
                if rcpt not in BOTS:
                    continue
                mail = message.parsed()
                # An auto-responder that marks nothing: no Auto-Submitted, no Precedence, a fresh Message-ID.
                reply = make_mail(sender=rcpt, to=mail["Reply-To"].addresses[0].addr_spec,
                                  subject=f"Re: {mail['Subject']}", body="I am away until Monday.",
                                  in_reply_to=str(mail["Message-ID"]))
                code = (await send(run.smtp_port, reply, mail_from=rcpt, rcpt_tos=[str(reply["To"])])).data_code
                assert code == 250
                replies += 1
            if not replies and await outbox_idle(run.deps):
                break

        stored = await posts(run.deps)
        held = [p for p in stored if p.status == PostStatus.HELD.value]
        assert len(stored) <= 10, f"1 post turned into {len(stored)}"
        assert held, "the loop must end in held posts"
        assert len(held) == 2  # the last reply of each bot's ping-pong chain
        (notice,) = await storm_notices(run.deps)
        assert notice.recipient == ADMIN and b"reply loop" in notice.raw
        async with run.deps.sessions() as session:
            reasons = (await session.scalars(select(HeldPost.reason))).all()
        assert all(reason.startswith("reply loop") for reason in reasons)


async def test_a_sender_flooding_one_topic_is_held_and_the_admins_told_once(
    settings: Settings, sink: SmtpSink
) -> None:
    limited = dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, topic_replies_per_10min=3))
    async with running(limited, fanout=False) as run:
        await seed(run)
        first = make_mail(sender=HUMAN, to=GENERAL, subject="Office hours", body="Who is around?",
                          message_id="<root@client.test>")
        assert (await send(run.smtp_port, first, mail_from=HUMAN, rcpt_tos=[GENERAL])).data_code == 250
        for n in range(6):
            reply = make_mail(sender=BOTS[0], to=GENERAL, subject="Re: Office hours", body=f"Reply number {n}.",
                              in_reply_to="<root@client.test>")
            assert (await send(run.smtp_port, reply, mail_from=BOTS[0], rcpt_tos=[GENERAL])).data_code == 250

        statuses = [p.status for p in await posts(run.deps)]
        assert statuses == [PostStatus.PUBLISHED.value] * 4 + [PostStatus.HELD.value] * 3
        (notice,) = await storm_notices(run.deps)
        assert notice.recipient == ADMIN and b"reply storm" in notice.raw
