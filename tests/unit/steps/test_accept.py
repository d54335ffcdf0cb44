"""accept: the last step of a successful post takes the message and names the post it made."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Category, Disposition, User
from qaflow_mail.pipeline import Outcome
from qaflow_mail.pipeline.steps.accept import accept
from qaflow_mail.replies import OK
from tests.unit.steps.conftest import MakeContext, add_post


async def test_accepts_with_the_stored_post_id(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    post = await add_post(session, author=alice, category=general, message_id="msg-1@example.org")

    result = await accept(make_context(post=post))

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.ACCEPTED
    assert result.reply == OK
    assert result.post_id == post.id
    assert result.accepted and not result.notify_sender


async def test_accepts_without_a_post_id_when_nothing_was_stored(make_context: MakeContext) -> None:
    result = await accept(make_context())

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.ACCEPTED
    assert result.reply == OK
    assert result.post_id is None
