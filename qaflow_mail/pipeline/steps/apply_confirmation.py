"""A reply to confirm+<token>@domain publishes the held announcement the token names.

The token (signed, bound to the announcement and its admin) reached only the admin's registered address, so
holding it is the proof. It works once, from that admin's own address, within [announce] confirm_ttl_hours of
the announcement. The very same confirmation mail delivered twice is a duplicate (dedupe: 250, nothing
happens); any further confirmation is refused as used.

The reply must begin with the word PUBLISH (above any quote; any case): an auto-responder at the admin's
address that marks nothing as automatic (guard_loops drops those that do) would otherwise confirm a forged
announcement just by answering the confirmation mail. Any mail client can do it.

What is published is the announcement's text only, and only if it is still exactly the subject and text the
confirmation mail showed (store_announcement.confirmation_sent_for); attachments are left out too.
"""

from __future__ import annotations

import dataclasses
import math
import re

from sqlalchemy import select

from qaflow_mail.db import queries
from qaflow_mail.db.models import Announcement, InboundMessage, UserStatus
from qaflow_mail.errors import SmtpReply
from qaflow_mail.mail.addresses import Confirm
from qaflow_mail.mail.content import extract_content
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.mail.tokens import InvalidToken, TokenError, TokenKind, verify
from qaflow_mail.outbound.announcements import AnnouncementStatus, VerifiedBy
from qaflow_mail.pipeline import Context, Outcome, accepted, rejected
from qaflow_mail.pipeline.steps.authorize_announcer import announcements_category
from qaflow_mail.pipeline.steps.store_announcement import (
    confirm_expires_at,
    confirmation_sent_for,
    confirmed_content,
    publish,
)
from qaflow_mail.pipeline.tokens import token_secrets

BAD_CONFIRMATION = SmtpReply(550, "5.1.1", "This confirmation address is not valid; reply to the confirmation email "
                                           "itself, without changing its address")
EXPIRED = SmtpReply(550, "5.1.1", "This confirmation has expired; send the announcement again")
ALREADY_USED = SmtpReply(550, "5.7.1", "This announcement was already confirmed: a confirmation works once "
                                       "(already used)")
NOT_THE_ADMIN = SmtpReply(550, "5.7.1", "Only the administrator who sent the announcement can confirm it, from "
                                        "their registered address")
GONE = SmtpReply(550, "5.7.1", "The announcement can no longer be published; send it again")
NOT_CONFIRMED = SmtpReply(550, "5.7.1", "Nothing was published: the reply did not begin with the word PUBLISH; "
                                        "reply to the confirmation email again with PUBLISH as its first word")
CHANGED = SmtpReply(550, "5.7.1", "The announcement is no longer what the confirmation email showed; send it "
                                  "again")

# The first word of what the admin wrote (quotes trimmed), allowing for emphasis marks around it.
_PUBLISH_RE = re.compile(r"[\s*_\"'`]*publish\b", re.IGNORECASE)


def says_publish(text: str) -> bool:
    """Whether a confirmation reply's own text (quoted history trimmed) begins with the word PUBLISH."""
    return _PUBLISH_RE.match(text) is not None


async def apply_confirmation(ctx: Context) -> Context | Outcome:
    destination = ctx.destination
    if not isinstance(destination, Confirm):
        raise TypeError(f"apply_confirmation cannot handle {destination!r}")
    settings = ctx.deps.settings
    # Token dates have a day's resolution: let them through a day late; the exact deadline is checked below.
    max_days = math.ceil(settings.announce.confirm_ttl_hours / 24) + 1
    try:
        payload = verify(destination.token, kind=TokenKind.CONFIRM, secrets=token_secrets(settings),
                         today=ctx.now.date(), max_age_days=max_days)
    except InvalidToken as exc:
        reply = EXPIRED if exc.reason is TokenError.EXPIRED else BAD_CONFIRMATION
        return rejected(reply, f"confirmation token: {exc}", notify_sender=False)
    announcement_id, admin_id = payload.ids
    announcement = await ctx.session.scalar(
        select(Announcement).where(Announcement.id == announcement_id).with_for_update()
    )
    if announcement is None or announcement.author_id != admin_id:
        return rejected(BAD_CONFIRMATION, f"confirmation of unknown announcement {announcement_id}",
                        notify_sender=False)
    sender = await queries.user_by_email(ctx.session, ctx.parsed.from_address) if ctx.parsed.from_address else None
    if sender is None or sender.id != admin_id:
        return rejected(NOT_THE_ADMIN, f"confirmation of announcement {announcement_id} from "
                                       f"{ctx.parsed.from_address or '(no From)'}", notify_sender=False)
    if announcement.status == AnnouncementStatus.PUBLISHED.value:
        return rejected(ALREADY_USED, f"announcement {announcement_id} already published", notify_sender=False)
    if announcement.status != AnnouncementStatus.AWAITING_CONFIRMATION.value:
        return rejected(BAD_CONFIRMATION, f"announcement {announcement_id} is {announcement.status}",
                        notify_sender=False)
    if ctx.now > confirm_expires_at(settings, announcement):
        return rejected(EXPIRED, f"confirmation of announcement {announcement_id} after its deadline",
                        notify_sender=False)
    if not sender.is_admin or sender.status != UserStatus.ACTIVE:
        return rejected(NOT_THE_ADMIN, f"user {sender.id} is no longer an active admin", notify_sender=False)
    if not says_publish(extract_content(ctx.parsed).text):
        return rejected(NOT_CONFIRMED, f"confirmation of announcement {announcement_id} does not begin with PUBLISH",
                        notify_sender=False)
    inbound = None if announcement.inbound_id is None else await ctx.session.scalar(
        select(InboundMessage).where(InboundMessage.id == announcement.inbound_id)
    )
    if inbound is None or not inbound.raw:
        return rejected(GONE, f"announcement {announcement_id}: the held message is gone", notify_sender=False)
    original = parse_message(inbound.raw)
    content = confirmed_content(extract_content(original))
    subject = original.subject.strip() or "(no subject)"
    if not await confirmation_sent_for(ctx.session, announcement_id, subject=subject, text=content.text):
        return rejected(CHANGED, f"announcement {announcement_id}: its text differs from what the confirmation "
                                 "showed", notify_sender=False)
    held = dataclasses.replace(
        ctx, raw=inbound.raw, parsed=dataclasses.replace(original, attachments=()), source=inbound.source,
        author=sender, category=await announcements_category(ctx), content=content,
    )
    published = await publish(held, verified_by=VerifiedBy.CONFIRMATION, announcement=announcement)
    return accepted(reason=f"announcement {announcement_id} confirmed and published as post {published.post.id}, "
                           f"{published.recipients} recipients")
