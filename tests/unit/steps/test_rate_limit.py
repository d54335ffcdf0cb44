"""rate_limit: at most [limits] sender_rate_per_hour accepted messages per From address in the last hour; past
that a temporary 450 4.7.1. Counted from inbound_messages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Disposition, InboundMessage
from qaflow_mail.deps import Deps
from qaflow_mail.pipeline.steps.rate_limit import rate_limit
from qaflow_mail.replies import RATE_LIMITED
from tests.unit.steps.conftest import ALICE, BOB, NOW, MakeContext, assert_refused, passed, tuned

LIMIT = 3


async def received(session: AsyncSession, count: int, *, sender: str = ALICE, ago: timedelta = timedelta(minutes=5),
                   disposition: Disposition = Disposition.ACCEPTED) -> None:
    session.add_all(
        InboundMessage(message_id=f"earlier-{sender}-{ago.total_seconds()}-{disposition}-{n}@example.org",
                       sha256="0" * 64, from_address=sender, received_at=NOW - ago, disposition=disposition.value,
                       raw=b"")
        for n in range(count)
    )
    await session.flush()


@pytest.fixture
def limited(deps: Deps) -> Deps:
    return tuned(deps, "limits", sender_rate_per_hour=LIMIT)


async def test_under_the_limit_passes_unchanged(make_context: MakeContext, session: AsyncSession,
                                                limited: Deps) -> None:
    await received(session, LIMIT - 1)
    ctx = make_context(deps=limited)

    assert passed(await rate_limit(ctx)) is ctx


async def test_past_the_limit_is_refused_for_now(make_context: MakeContext, session: AsyncSession,
                                                 limited: Deps) -> None:
    await received(session, LIMIT)

    result = assert_refused(await rate_limit(make_context(deps=limited)), RATE_LIMITED)

    assert result.reply.code == 450  # temporary: the sending MTA tries again later
    assert not result.notify_sender
    assert f"{LIMIT} posts from {ALICE}" in result.reason


async def test_only_the_last_hour_counts(make_context: MakeContext, session: AsyncSession, limited: Deps) -> None:
    await received(session, LIMIT, ago=timedelta(hours=1, minutes=1))
    await received(session, LIMIT - 1, ago=timedelta(minutes=59))
    ctx = make_context(deps=limited)

    assert passed(await rate_limit(ctx)) is ctx


@pytest.mark.parametrize("disposition", [Disposition.REJECTED, Disposition.DISCARDED, Disposition.HELD])
async def test_only_accepted_messages_count(make_context: MakeContext, session: AsyncSession, limited: Deps,
                                            disposition: Disposition) -> None:
    await received(session, LIMIT * 2, disposition=disposition)
    ctx = make_context(deps=limited)

    assert passed(await rate_limit(ctx)) is ctx


async def test_each_sender_has_their_own_limit(make_context: MakeContext, session: AsyncSession,
                                               limited: Deps) -> None:
    await received(session, LIMIT, sender=BOB)
    ctx = make_context(deps=limited)

    assert passed(await rate_limit(ctx)) is ctx
    assert_refused(await rate_limit(make_context({"From": f"Bob <{BOB}>"}, deps=limited)), RATE_LIMITED)


@pytest.mark.parametrize("limit", [0, -1])
async def test_a_limit_of_zero_or_less_switches_the_check_off(make_context: MakeContext, session: AsyncSession,
                                                              deps: Deps, limit: int) -> None:
    await received(session, 50)
    ctx = make_context(deps=tuned(deps, "limits", sender_rate_per_hour=limit))

    assert passed(await rate_limit(ctx)) is ctx
