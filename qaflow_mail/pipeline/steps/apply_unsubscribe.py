"""Mail to unsubscribe+<token>@domain (the mailto: of List-Unsubscribe) turns that subscription off and queues a
confirmation to the subscriber's own address. Repeating it changes nothing; a bad token is refused."""

from __future__ import annotations

from qaflow_mail.mail.addresses import Unsubscribe
from qaflow_mail.outbound.outbox import enqueue
from qaflow_mail.pipeline import Context, Outcome, accepted, rejected
from qaflow_mail.replies import BAD_UNSUBSCRIBE_TOKEN
from qaflow_mail.services.notices import unsubscribed_notice
from qaflow_mail.services.subscriptions import unsubscribe_by_token


async def apply_unsubscribe(ctx: Context) -> Context | Outcome:
    assert isinstance(ctx.destination, Unsubscribe)
    result = await unsubscribe_by_token(ctx.session, ctx.destination.token, ctx.deps.settings, ctx.now)
    if not result.ok:
        return rejected(BAD_UNSUBSCRIBE_TOKEN, f"unsubscribe token {result.status}: {result.detail}")
    in_reply_to = None if ctx.parsed.message_id_synthesized else ctx.parsed.message_id
    notice = unsubscribed_notice(ctx.deps.settings, ctx.deps.renderer, result, now=ctx.now, in_reply_to=in_reply_to)
    await enqueue(ctx.session, [notice], now=ctx.now)
    what = "announcements" if result.category_slug is None else f"category {result.category_slug}"
    return accepted(reason=f"unsubscribe: user {result.user_id} from {what} ({result.status})")
