"""dedupe: a message already posted or already taken is discarded (accepted again, stored once); a message only
refused before may be tried again."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Category, Disposition, InboundMessage, User
from qaflow_mail.pipeline import Outcome
from qaflow_mail.pipeline.steps.dedupe import dedupe
from qaflow_mail.replies import OK
from tests.unit.steps.conftest import ALICE, NOW, MakeContext, add_post, passed

MID = "copy-1@example.org"


def inbound(disposition: Disposition, message_id: str = MID) -> InboundMessage:
    return InboundMessage(message_id=message_id, sha256="0" * 64, from_address=ALICE, received_at=NOW,
                          disposition=disposition.value, raw=b"")


async def test_a_new_message_passes_unchanged(make_context: MakeContext, session: AsyncSession) -> None:
    session.add(inbound(Disposition.ACCEPTED, message_id="another@example.org"))
    await session.flush()
    ctx = make_context({"Message-ID": f"<{MID}>"})

    assert passed(await dedupe(ctx)) is ctx


async def test_a_second_copy_of_a_posted_message_is_discarded(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    await add_post(session, author=alice, category=general, message_id=MID)

    result = await dedupe(make_context({"Message-ID": f"<{MID}>"}))

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.DISCARDED
    assert result.reply == OK
    assert result.reason == "duplicate: already posted"


@pytest.mark.parametrize("earlier", [Disposition.ACCEPTED, Disposition.DISCARDED, Disposition.HELD])
async def test_a_message_taken_before_is_discarded(
    make_context: MakeContext, session: AsyncSession, earlier: Disposition
) -> None:
    session.add(inbound(earlier))
    await session.flush()

    result = await dedupe(make_context({"Message-ID": f"<{MID}>"}))

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.DISCARDED
    assert result.reason == "duplicate: already received"


async def test_a_message_refused_before_may_try_again(make_context: MakeContext, session: AsyncSession) -> None:
    session.add(inbound(Disposition.REJECTED))
    await session.flush()
    ctx = make_context({"Message-ID": f"<{MID}>"})

    assert passed(await dedupe(ctx)) is ctx
