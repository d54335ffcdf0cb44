"""answer_noreply: mail to our notifications@ From address is never posted; a reply to a whole digest is told how
to reply to one topic, anything else which addresses take mail."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Category, MessageRef, User
from qaflow_mail.db.queries import DIGEST_REF_KIND
from qaflow_mail.mail.addresses import FROM_LOCAL_PART, NoReply
from qaflow_mail.pipeline import Context
from qaflow_mail.pipeline.steps.answer_noreply import answer_noreply
from qaflow_mail.replies import DIGEST_REPLY, NOT_A_MAILBOX
from tests.unit.steps.conftest import DOMAIN, MakeContext, add_post, assert_refused

DIGEST_ID = f"digest-7@{DOMAIN}"


def noreply_context(make_context: MakeContext, **headers: str) -> Context:
    return make_context({"To": f"{FROM_LOCAL_PART}@{DOMAIN}", **headers}, destination=NoReply(),
                        recipient=f"{FROM_LOCAL_PART}@{DOMAIN}")


async def digest(session: AsyncSession) -> None:
    session.add(MessageRef(message_id=DIGEST_ID, post_id=None, user_id=None, kind=DIGEST_REF_KIND))
    await session.flush()


async def test_mail_to_the_notifications_address_is_refused(make_context: MakeContext) -> None:
    result = assert_refused(await answer_noreply(noreply_context(make_context)), NOT_A_MAILBOX)

    assert result.notify_sender


async def test_a_reply_to_a_digest_is_told_how_to_reply(make_context: MakeContext, session: AsyncSession) -> None:
    await digest(session)

    assert_refused(await answer_noreply(noreply_context(make_context, **{"In-Reply-To": f"<{DIGEST_ID}>"})),
                   DIGEST_REPLY)


async def test_a_digest_named_only_in_references_counts(make_context: MakeContext, session: AsyncSession) -> None:
    await digest(session)
    ctx = noreply_context(make_context, **{"References": f"<{DIGEST_ID}> <other@example.org>"})

    assert_refused(await answer_noreply(ctx), DIGEST_REPLY)


async def test_a_reply_to_a_post_notification_is_not_a_digest_reply(
    make_context: MakeContext, session: AsyncSession, alice: User, general: Category
) -> None:
    post = await add_post(session, author=alice, category=general, message_id="msg-0@example.org")
    session.add(MessageRef(message_id=f"post-{post.id}@{DOMAIN}", post_id=post.id, user_id=None,
                           kind="notification"))
    await session.flush()

    result = await answer_noreply(noreply_context(make_context, **{"In-Reply-To": f"<post-{post.id}@{DOMAIN}>"}))

    assert_refused(result, NOT_A_MAILBOX)
