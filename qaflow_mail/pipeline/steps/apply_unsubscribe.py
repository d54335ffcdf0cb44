"""Mail to unsubscribe+<token>@domain (the mailto: of List-Unsubscribe) turns that subscription off and queues a
confirmation to the subscriber's own address. Repeating it changes nothing; a bad token is refused."""

from __future__ import annotations

from datetime import datetime

from qaflow_mail.config import Settings
from qaflow_mail.db.models import OutboxKind
from qaflow_mail.errors import SmtpReply
from qaflow_mail.mail.addresses import Unsubscribe
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.outbound.notify import category_url
from qaflow_mail.outbound.queue import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import MailTemplate, Renderer
from qaflow_mail.outbound.site_notice import site_notice, user_bounce_address
from qaflow_mail.pipeline import Context, Outcome, accepted, rejected
from qaflow_mail.pipeline.steps.enqueue_notifications import get_renderer
from qaflow_mail.subscriptions import ANNOUNCEMENTS_CATEGORY_ID, UnsubscribeResult, unsubscribe_by_token

BAD_UNSUBSCRIBE_TOKEN = SmtpReply(
    550,
    "5.1.1",
    "This unsubscribe address is not valid (it may have been cut off or changed); use the unsubscribe link "
    "or address in a recent email from the forum",
)


async def apply_unsubscribe(ctx: Context) -> Context | Outcome:
    destination = ctx.destination
    if not isinstance(destination, Unsubscribe):
        raise TypeError(f"apply_unsubscribe cannot handle {destination!r}")
    settings = ctx.deps.settings
    result = await unsubscribe_by_token(ctx.session, destination.token, settings, ctx.now)
    if not result.ok:
        return rejected(BAD_UNSUBSCRIBE_TOKEN, f"unsubscribe token {result.status}: {result.detail}",
                        notify_sender=False)
    in_reply_to = None if ctx.parsed.message_id_synthesized else ctx.parsed.message_id
    await enqueue(
        ctx.session,
        [confirmation(settings, get_renderer(settings), result, now=ctx.now, in_reply_to=in_reply_to)],
        now=ctx.now,
    )
    what = "announcements" if result.category_slug is None else f"category {result.category_slug}"
    return accepted(reason=f"unsubscribe: user {result.user_id} from {what} ({result.status})")


def confirmation(
    settings: Settings, renderer: Renderer, result: UnsubscribeResult, *, now: datetime, in_reply_to: str | None
) -> OutgoingMessage:
    """The "you are unsubscribed" email, to the subscriber's registered address (never the sender of the request,
    who could be anyone holding the token). At most one per subscription and day: its dedupe key says so."""
    assert result.user_id is not None and result.email is not None
    domain = settings.site.domain
    target = (
        result.category_slug if result.digest_mode is not None
        else result.category_id if result.category_id is not None else ANNOUNCEMENTS_CATEGORY_ID
    )
    category = (
        None if result.category_slug is None else {"name": result.category_name, "slug": result.category_slug}
    )
    rendered = renderer.render(
        MailTemplate.NOTICE_UNSUBSCRIBED,
        {
            "site": {"name": settings.site.name, "base_url": settings.site.base_url},
            "category": category,
            "resubscribe_url": settings.site.base_url
            if result.category_slug is None or result.digest_mode is not None
            else category_url(settings, result.category_slug),
            # <slug>-request@ commands are not handled yet; do not point people at them.
            "request_address": None,
        },
    )
    day = now.strftime("%Y%m%d")
    message_id = make_message_id("unsubscribed", f"{result.user_id}.{target}.{day}", domain=domain)
    raw = site_notice(settings, to=result.email, rendered=rendered, message_id=message_id, in_reply_to=in_reply_to,
                      now=now)
    return OutgoingMessage(
        kind=OutboxKind.NOTICE,
        dedupe_key=f"unsubscribed:{result.user_id}:{target}:{day}",
        message_id=message_id,
        envelope_from=user_bounce_address(settings, result.user_id, now=now),
        recipient=result.email,
        raw=raw,
        user_id=result.user_id,
    )
