"""A verified announcement is published at once: a topic in `announcements`, an `announcements` row, and the
broadcast to every active user who has not muted announcements, all in this message's transaction.

Any other announcement from an admin address is held (reply 250: the message is taken): the row waits with
status awaiting_confirmation, the raw message stays in inbound_messages (linked), and a confirmation goes to the
admin's registered address (users.email, never this mail's From) with a confirm+<token> Reply-To. At most
[announce] confirm_rate_per_hour confirmations per admin and hour: a flood of forged mail beyond that is held
silently (status held) and logged. Only a reply to the confirmation publishes it (apply_confirmation).

What a confirmation shows is what gets published: a held announcement publishes its text alone (no HTML
version, no attachments: the confirmation could not show those faithfully), and the confirmation quotes that
text whole (up to CONFIRM_QUOTED_LINES lines, saying how many it left out). The announcements table has no
column for it, so the sha256 of the subject and text shown is kept in the confirmation's outbox dedupe key
(``confirm:<announcement id>:<sha256>``); at publish time both are derived again from the kept raw message and
must hash the same (confirmation_sent_for).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.models import Announcement, Disposition, InboundMessage, Outbox, OutboxKind, Post, User
from qaflow_mail.errors import OK
from qaflow_mail.mail.addresses import token_address
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.mail.content import Content
from qaflow_mail.mail.dkim_check import AuthMethod, AuthVerdict
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.outbound.announcements import AnnouncementStatus, VerifiedBy, audience_count, enqueue_broadcast
from qaflow_mail.outbound.notify import author_name
from qaflow_mail.outbound.queue import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import Renderer
from qaflow_mail.outbound.site_notice import site_notice, user_bounce_address
from qaflow_mail.pipeline import Context, Outcome, accepted
from qaflow_mail.pipeline.steps.authorize_announcer import AUTH_KEY
from qaflow_mail.pipeline.steps.enqueue_notifications import get_renderer
from qaflow_mail.pipeline.steps.store_post import store_post

log = logging.getLogger(__name__)

CONFIRM_TEMPLATE = "notice/confirm_announcement"
CONFIRM_QUOTED_LINES = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    announcement: Announcement
    post: Post
    recipients: int


async def publish(
    ctx: Context, *, verified_by: VerifiedBy, announcement: Announcement | None = None
) -> Published:
    """Store the post (a new topic in ctx.category), mark the announcement published and enqueue its broadcast.
    ctx carries author, category (announcements) and content."""
    assert ctx.author is not None and ctx.category is not None and ctx.content is not None
    stored = await store_post(dataclasses.replace(ctx, parent=None, candidates=()))
    if isinstance(stored, Outcome):
        raise RuntimeError(f"store_post refused an announcement: {stored.reason}")
    post = stored.extra["post"]
    assert isinstance(post, Post)
    if announcement is None:
        announcement = Announcement(author_id=ctx.author.id, subject=post.subject, created_at=ctx.now, status="")
        ctx.session.add(announcement)
    else:
        announcement.confirmed_at = ctx.now
    announcement.post_id = post.id
    announcement.status = AnnouncementStatus.PUBLISHED.value
    announcement.verified_by = verified_by.value
    await ctx.session.flush()
    count = await enqueue_broadcast(ctx.session, settings=ctx.deps.settings, renderer=get_renderer(ctx.deps.settings),
                                    announcement=announcement, post=post, author=ctx.author, now=ctx.now)
    log.info("announce.published announcement_id=%s post_id=%s verified_by=%s recipients=%d", announcement.id,
             post.id, verified_by.value, count)
    return Published(announcement=announcement, post=post, recipients=count)


def link_inbound_when_recorded(session: AsyncSession, announcement: Announcement, message_id: str) -> None:
    """Point announcement.inbound_id at this message's inbound_messages row (its raw bytes).

    ingest writes that row in this same transaction, after the steps have run. The flush that inserts it gives
    it an id (seen in after_flush, while it is still among the session's new objects); the announcement is
    updated after that flush, and the commit's next flush writes the link.
    """
    found: list[int] = []

    def after_flush(sync_session: Any, _context: Any) -> None:
        if not found:
            found.extend(obj.id for obj in sync_session.new
                         if isinstance(obj, InboundMessage) and obj.message_id == message_id)

    def after_flush_postexec(_sync_session: Any, _context: Any) -> None:
        if found and announcement.inbound_id is None:
            announcement.inbound_id = found[0]

    event.listen(session.sync_session, "after_flush", after_flush)
    event.listen(session.sync_session, "after_flush_postexec", after_flush_postexec)


def confirm_expires_at(settings: Settings, announcement: Announcement) -> datetime:
    return announcement.created_at + timedelta(hours=settings.announce.confirm_ttl_hours)


def confirmed_content(content: Content) -> Content:
    """What a held announcement publishes once confirmed: its text alone, never an HTML version."""
    return dataclasses.replace(content, html=None)


def confirmation_key(announcement_id: int, *, subject: str, text: str) -> str:
    """The outbox dedupe key of the confirmation that showed this subject and text for this announcement."""
    digest = hashlib.sha256(f"{subject}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"confirm:{announcement_id}:{digest}"


async def confirmation_sent_for(session: AsyncSession, announcement_id: int, *, subject: str, text: str) -> bool:
    """Whether the confirmation mail sent for this announcement showed exactly this subject and text."""
    found = await session.scalar(select(Outbox.id).where(
        Outbox.kind == OutboxKind.CONFIRMATION.value, Outbox.announcement_id == announcement_id,
        Outbox.dedupe_key == confirmation_key(announcement_id, subject=subject, text=text),
    ))
    return found is not None


async def _confirmations_last_hour(session: AsyncSession, *, author_id: int, now: datetime) -> int:
    """Confirmation mails sent for this admin in the past hour: rows that got one (waiting, or since confirmed)."""
    count = await session.scalar(
        select(func.count(Announcement.id)).where(
            Announcement.author_id == author_id,
            Announcement.created_at > now - timedelta(hours=1),
            or_(Announcement.status == AnnouncementStatus.AWAITING_CONFIRMATION.value,
                Announcement.verified_by == VerifiedBy.CONFIRMATION.value),
        )
    )
    return int(count or 0)


def confirmation_message(
    settings: Settings, renderer: Renderer, *, announcement: Announcement, admin: User, reason: str,
    content: Content, attachments: int, audience: int, in_reply_to: str | None, now: datetime,
) -> OutgoingMessage:
    """The confirmation mail for a held announcement whose published text will be `content.text` under
    `announcement.subject`; the mail's HTML version and its `attachments` are left out of what is published,
    and the confirmation says so."""
    domain = settings.site.domain
    secret = settings.tokens.secret
    token = sign(TokenKind.CONFIRM, (announcement.id, admin.id), secret=secret, issued=now.date())
    confirm_address = token_address(TokenKind.CONFIRM, token, domain=domain)
    expires = confirm_expires_at(settings, announcement)
    lines = content.text.splitlines()
    rendered = renderer.render(CONFIRM_TEMPLATE, {
        "site": {"name": settings.site.name, "base_url": settings.site.base_url},
        "admin_name": author_name(admin),
        "subject": announcement.subject,
        "reason": reason,
        "quoted_lines": lines[:CONFIRM_QUOTED_LINES],
        "omitted_lines": max(len(lines) - CONFIRM_QUOTED_LINES, 0),
        "html_left_out": content.html is not None,
        "attachments_left_out": attachments,
        "audience": audience,
        "confirm_address": confirm_address,
        "expires": f"{expires:%Y-%m-%d %H:%M} UTC",
    })
    message_id = make_message_id("confirm", str(announcement.id), domain=domain)
    raw = site_notice(settings, to=admin.email, rendered=rendered, message_id=message_id, in_reply_to=in_reply_to,
                      now=now, reply_to=confirm_address)
    return OutgoingMessage(
        kind=OutboxKind.CONFIRMATION,
        dedupe_key=confirmation_key(announcement.id, subject=announcement.subject, text=content.text),
        message_id=message_id,
        envelope_from=user_bounce_address(settings, admin.id, now=now),
        recipient=admin.email,
        raw=raw,
        user_id=admin.id,
        announcement_id=announcement.id,
    )


async def hold(ctx: Context, verdict: AuthVerdict) -> Outcome:
    assert ctx.author is not None and ctx.content is not None
    settings = ctx.deps.settings
    admin = ctx.author
    subject = ctx.parsed.subject.strip() or "(no subject)"
    recent = await _confirmations_last_hour(ctx.session, author_id=admin.id, now=ctx.now)
    limited = recent >= settings.announce.confirm_rate_per_hour
    status = AnnouncementStatus.HELD if limited else AnnouncementStatus.AWAITING_CONFIRMATION
    announcement = Announcement(author_id=admin.id, subject=subject, status=status.value, verified_by="",
                                created_at=ctx.now)
    ctx.session.add(announcement)
    await ctx.session.flush()
    link_inbound_when_recorded(ctx.session, announcement, ctx.parsed.message_id)
    if limited:
        log.warning("announce.confirmation_rate_limited announcement_id=%s admin_id=%s from=%s sent_last_hour=%d",
                    announcement.id, admin.id, ctx.parsed.from_address, recent)
        return Outcome(Disposition.HELD, OK, f"announcement {announcement.id} held: confirmation rate limit")
    message = confirmation_message(
        settings, get_renderer(settings), announcement=announcement, admin=admin, reason=verdict.reason,
        content=ctx.content, attachments=len(ctx.parsed.attachments), audience=await audience_count(ctx.session),
        in_reply_to=None if ctx.parsed.message_id_synthesized else ctx.parsed.message_id, now=ctx.now,
    )
    await enqueue(ctx.session, [message], now=ctx.now)
    log.info("announce.held announcement_id=%s admin_id=%s reason=%s", announcement.id, admin.id, verdict.reason)
    return Outcome(Disposition.HELD, OK, f"announcement {announcement.id} awaits confirmation: {verdict.reason}")


async def store_announcement(ctx: Context) -> Context | Outcome:
    verdict = ctx.extra.get(AUTH_KEY)
    if not isinstance(verdict, AuthVerdict):
        raise TypeError("store_announcement runs after authorize_announcer, which sets ctx.extra['announce_auth']")
    if not verdict.passed:
        return await hold(ctx, verdict)
    by = VerifiedBy.DKIM if verdict.method is AuthMethod.DKIM else VerifiedBy.AUTHENTICATION_RESULTS
    published = await publish(ctx, verified_by=by)
    link_inbound_when_recorded(ctx.session, published.announcement, ctx.parsed.message_id)
    return accepted(published.post.id, reason=f"announcement {published.announcement.id} published ({verdict.reason}), "
                                              f"{published.recipients} recipients")
