"""At most [limits] sender_rate_per_hour posts per sender and hour over SMTP; more gets a temporary 450 4.7.1, and
the message goes through once the hour has moved on."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Disposition, InboundMessage, Post
from qaflow_mail.server.app import Running
from tests.clock import Clock
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, BOB = "alice@example.org", "bob@example.net"
START = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    limit = getattr(request, "param", 3)
    return dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, sender_rate_per_hour=limit))


@pytest.fixture
async def forum(gateway: Running, clock: Clock) -> tuple[Running, Clock]:
    clock.now = START
    async with gateway.deps.sessions() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_user(session, email=ALICE, now=START)
        await queries.add_user(session, email=BOB, now=START)
    return gateway, clock


async def post(run: Running, sender: str, n: int, body: str = "A question worth asking.") -> tuple[int, str]:
    msg = make_mail(sender=sender, to=GENERAL, subject=f"Question {n}", body=body,
                    message_id=f"<q{n}.{sender}>")
    conv = await send(run.smtp_port, msg, mail_from=sender, rcpt_tos=[GENERAL])
    assert conv.data is not None
    return conv.data


async def posts_by(run: Running) -> int:
    async with run.deps.sessions() as session:
        return int(await session.scalar(select(func.count(Post.id))) or 0)


async def test_over_the_limit_is_refused_for_now(forum: tuple[Running, Clock]) -> None:
    run, clock = forum
    for n in range(3):
        clock.now = START + timedelta(minutes=10 * n)
        assert (await post(run, ALICE, n))[0] == 250
    clock.now = START + timedelta(minutes=40)
    code, text = await post(run, ALICE, 3)
    assert code == 450
    assert text.startswith("4.7.1")
    assert (await post(run, BOB, 3))[0] == 250  # another sender is not affected
    assert await posts_by(run) == 4
    async with run.deps.sessions() as session:
        refused = (await session.scalars(
            select(InboundMessage).where(InboundMessage.disposition == Disposition.REJECTED))).one()
    assert refused.message_id == f"q3.{ALICE}"
    assert "rate limit" in refused.reason

    # The sending MTA retries: an hour after the first post one slot is free again.
    clock.now = START + timedelta(minutes=61)
    assert (await post(run, ALICE, 3))[0] == 250
    assert (await post(run, ALICE, 4))[0] == 450


async def test_refused_and_discarded_mail_does_not_count(forum: tuple[Running, Clock]) -> None:
    run, _clock = forum
    for n in range(3):
        code, text = await post(run, ALICE, n, body="On Mon, Bob wrote:\n> only a quote\n> of something\n")
        assert (code, text[:5]) == (550, "5.6.0")  # empty once trimmed
    for n in range(3, 6):
        assert (await post(run, ALICE, n))[0] == 250
    assert (await post(run, ALICE, 6))[0] == 450


@pytest.mark.parametrize("settings", [0], indirect=True)
async def test_zero_switches_the_limit_off(forum: tuple[Running, Clock]) -> None:
    run, _clock = forum
    assert run.deps.settings.limits.sender_rate_per_hour == 0
    for n in range(5):
        assert (await post(run, ALICE, n))[0] == 250
