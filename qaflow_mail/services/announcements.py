"""Announcements: who may announce, publishing one (a topic in `announcements` and its broadcast), holding an
unproven one for a confirmation by mail, and publishing it when the admin confirms.

The From of a mail proves nothing. A verified announcement (DKIM aligned with the From domain, or our own MTA's
Authentication-Results; see mail.dkim_check) is published at once. Any other from an admin address is held: the
row waits with status awaiting_confirmation, the raw message stays in inbound_messages (linked), and a
confirmation goes to the admin's registered address (users.email, never the mail's From) with a
confirm+<token> Reply-To. At most [announce] confirm_rate_per_hour confirmations per admin and hour: a flood of
forged mail beyond that is held silently (status held) and logged.

A confirmation reply must begin with the word PUBLISH (above any quote; any case): an auto-responder at the
admin's address that marks nothing as automatic would otherwise confirm a forged announcement just by answering.
It works once, from that admin's own address, within [announce] confirm_ttl_hours.

What a confirmation shows is what gets published: a held announcement publishes its text alone (no HTML version,
no attachments: the confirmation could not show those faithfully), and the confirmation quotes that text whole
(up to CONFIRM_QUOTED_LINES lines, saying how many it left out). The sha256 of the subject and text shown is kept
in the confirmation's outbox dedupe key (``confirm:<announcement id>:<sha256>``); at publish time both are
derived again from the kept raw message and must hash the same (confirmation_sent_for).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import re
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from sqlalchemy import event, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    ANNOUNCEMENTS_SLUG,
    Announcement,
    Category,
    FanoutKind,
    InboundMessage,
    Outbox,
    OutboxKind,
    Post,
    Source,
    User,
    UserStatus,
)
from qaflow_mail.deps import Deps
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.mail.content import Content, extract_content
from qaflow_mail.mail.dkim_check import AuthMethod, AuthVerdict, verify_announcer
from qaflow_mail.mail.parse import ParsedMail, parse_message
from qaflow_mail.mail.tokens import InvalidToken, TokenError, TokenKind, sign, verify
from qaflow_mail.outbound.announcements import AnnouncementStatus, VerifiedBy, audience_count
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import author_name
from qaflow_mail.outbound.site_notice import site_notice, user_bounce_address
from qaflow_mail.replies import (
    ANNOUNCEMENT_CHANGED,
    ANNOUNCEMENT_GONE,
    BAD_CONFIRMATION,
    CONFIRMATION_EXPIRED,
    CONFIRMATION_USED,
    NOT_ADMIN,
    NOT_CONFIRMED,
    NOT_THE_ADMIN,
    NOT_VERIFIED,
    Refusal,
)
from qaflow_mail.services import fanout_jobs
from qaflow_mail.services.posts import NO_SUBJECT, store_post
from qaflow_mail.urls import confirm_address

log = logging.getLogger(__name__)

CONFIRM_TEMPLATE = "notice/confirm_announcement"
CONFIRM_QUOTED_LINES = 200

# The first word of what the admin wrote (quotes trimmed), allowing for emphasis marks around it.
_PUBLISH_RE = re.compile(r"[\s*_\"'`]*publish\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class Announcer:
    """An active admin writing to announce@, and whether the mail proves it is them."""

    admin: User
    verdict: AuthVerdict


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    announcement: Announcement
    post: Post
    recipients: int


@dataclasses.dataclass(frozen=True, slots=True)
class Held:
    announcement: Announcement
    confirmation_sent: bool


async def announcements_category(session: AsyncSession) -> Category:
    category = await queries.category_by_slug(session, ANNOUNCEMENTS_SLUG)
    if category is None:  # a default category, but an admin may have removed it
        category = await queries.add_category(session, slug=ANNOUNCEMENTS_SLUG, name="Announcements",
                                              allow_strangers=False)
    return category


async def check_announcer(
    session: AsyncSession, deps: Deps, *, raw: bytes, parsed: ParsedMail, now: datetime
) -> Announcer | Refusal:
    """Only an active admin may announce; how far the mail proves the sender decides publish or hold.

    With [announce] require = "dkim" an unverified announcement is refused; with "confirm" every announcement
    waits for a confirmation.
    """
    settings = deps.settings
    address = parsed.from_address
    user = await queries.user_by_email(session, address) if address else None
    if user is None or not user.is_admin:
        return Refusal(NOT_ADMIN, f"announcement from {address or '(no From)'}, not an admin")
    if user.status != UserStatus.ACTIVE:
        return Refusal(NOT_ADMIN, f"announcement from admin {address} whose status is {user.status}")
    require = settings.announce.require
    if require == "confirm":
        verdict = AuthVerdict(False, AuthMethod.NONE, "[announce] require = confirm: every announcement is confirmed")
    else:
        # DKIM needs DNS (blocking in dkimpy) and RSA arithmetic: keep them off the event loop.
        verdict = await asyncio.to_thread(
            verify_announcer, raw, parsed, from_domain=address.rpartition("@")[2],
            announce_address=f"{settings.announce.address}@{settings.site.domain}", now=now,
            dnsfunc=deps.dkim_dnsfunc, trusted_authserv_id=settings.announce.trusted_authserv_id,
        )
    if not verdict.passed and require == "dkim":
        return Refusal(NOT_VERIFIED, f"announcement from {address} not verified: {verdict.reason}")
    return Announcer(admin=user, verdict=verdict)


def verified_by(verdict: AuthVerdict) -> VerifiedBy:
    return VerifiedBy.DKIM if verdict.method is AuthMethod.DKIM else VerifiedBy.AUTHENTICATION_RESULTS


async def publish(
    session: AsyncSession, deps: Deps, *, author: User, parsed: ParsedMail, content: Content, source: Source,
    now: datetime, verified: VerifiedBy, announcement: Announcement | None = None,
) -> Published:
    """Store the announcement as a new topic in `announcements`, mark it published and write its broadcast's
    fan-out job; `recipients` is the audience the job will write to."""
    category = await announcements_category(session)
    post = await store_post(session, author=author, category=category, parent=None, parsed=parsed, content=content,
                            source=source, written_at=now)
    if announcement is None:
        announcement = Announcement(author_id=author.id, subject=post.subject, created_at=now, status="")
        session.add(announcement)
    else:
        announcement.confirmed_at = now
    announcement.post_id = post.id
    announcement.status = AnnouncementStatus.PUBLISHED.value
    announcement.verified_by = verified.value
    await session.flush()
    # The broadcast is a fan-out job written with the announcement: the 250 (or the command) never waits on the
    # number of users; a worker writes the outbox rows in batches, resuming after a crash.
    await fanout_jobs.enqueue(session, kind=FanoutKind.ANNOUNCEMENT, target_id=announcement.id, now=now)
    count = await audience_count(session)
    log.info("announce.published announcement_id=%s post_id=%s verified_by=%s recipients=%d", announcement.id,
             post.id, verified.value, count)
    return Published(announcement=announcement, post=post, recipients=count)


async def publish_text(
    session: AsyncSession, deps: Deps, *, author: User, subject: str, text: str, now: datetime
) -> Published:
    """An announcement written on the command line (the shell proves who the admin is: no DKIM, no confirmation).

    It is stored as if the admin had mailed it. Raises PermissionError for anyone but an active admin and
    ValueError for an empty text.
    """
    if not author.is_admin or author.status != UserStatus.ACTIVE:
        raise PermissionError(f"{author.email} is not an active admin: only admins may announce")
    settings = deps.settings
    message = EmailMessage()
    message["From"] = author.email
    message["To"] = f"{settings.announce.address}@{settings.site.domain}"
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid("announce", domain=settings.site.domain)
    message.set_content(text)
    parsed = parse_message(message.as_bytes())
    content = extract_content(parsed)
    if content.is_empty:
        raise ValueError("the announcement has no text")
    return await publish(session, deps, author=author, parsed=parsed, content=content, source=Source.CLI, now=now,
                         verified=VerifiedBy.COMMAND_LINE)


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
    deps: Deps, *, announcement: Announcement, admin: User, reason: str, content: Content, attachments: int,
    audience: int, in_reply_to: str | None, now: datetime,
) -> OutgoingMessage:
    """The confirmation mail for a held announcement whose published text will be `content.text` under
    `announcement.subject`; the mail's HTML version and its `attachments` are left out of what is published,
    and the confirmation says so."""
    settings = deps.settings
    token = sign(TokenKind.CONFIRM, (announcement.id, admin.id), secret=settings.tokens.secret, issued=now.date())
    reply_to = confirm_address(settings, token)
    expires = confirm_expires_at(settings, announcement)
    lines = content.text.splitlines()
    rendered = deps.renderer.render(CONFIRM_TEMPLATE, {
        "site": {"name": settings.site.name, "base_url": settings.site.base_url},
        "admin_name": author_name(admin),
        "subject": announcement.subject,
        "reason": reason,
        "quoted_lines": lines[:CONFIRM_QUOTED_LINES],
        "omitted_lines": max(len(lines) - CONFIRM_QUOTED_LINES, 0),
        "html_left_out": content.html is not None,
        "attachments_left_out": attachments,
        "audience": audience,
        "confirm_address": reply_to,
        "expires": f"{expires:%Y-%m-%d %H:%M} UTC",
    })
    message_id = make_message_id("confirm", str(announcement.id), domain=settings.site.domain,
                                 salt=settings.site.message_id_salt)
    raw = site_notice(settings, to=admin.email, rendered=rendered, message_id=message_id, in_reply_to=in_reply_to,
                      now=now, reply_to=reply_to)
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


async def hold(
    session: AsyncSession, deps: Deps, *, announcer: Announcer, parsed: ParsedMail, content: Content, now: datetime
) -> Held:
    """Keep an unproven announcement and mail its admin a confirmation (within the hourly limit)."""
    admin = announcer.admin
    subject = parsed.subject.strip() or NO_SUBJECT
    recent = await _confirmations_last_hour(session, author_id=admin.id, now=now)
    limited = recent >= deps.settings.announce.confirm_rate_per_hour
    status = AnnouncementStatus.HELD if limited else AnnouncementStatus.AWAITING_CONFIRMATION
    announcement = Announcement(author_id=admin.id, subject=subject, status=status.value, verified_by="",
                                created_at=now)
    session.add(announcement)
    await session.flush()
    link_inbound_when_recorded(session, announcement, parsed.message_id)
    if limited:
        log.warning("announce.confirmation_rate_limited announcement_id=%s admin_id=%s from=%s sent_last_hour=%d",
                    announcement.id, admin.id, parsed.from_address, recent)
        return Held(announcement, confirmation_sent=False)
    message = confirmation_message(
        deps, announcement=announcement, admin=admin, reason=announcer.verdict.reason, content=content,
        attachments=len(parsed.attachments), audience=await audience_count(session),
        in_reply_to=None if parsed.message_id_synthesized else parsed.message_id, now=now,
    )
    await enqueue(session, [message], now=now)
    log.info("announce.held announcement_id=%s admin_id=%s reason=%s", announcement.id, admin.id,
             announcer.verdict.reason)
    return Held(announcement, confirmation_sent=True)


def says_publish(text: str) -> bool:
    """Whether a confirmation reply's own text (quoted history trimmed) begins with the word PUBLISH."""
    return _PUBLISH_RE.match(text) is not None


async def confirm(
    session: AsyncSession, deps: Deps, *, token: str, reply: ParsedMail, now: datetime
) -> Published | Refusal:
    """Publish the held announcement a confirm+<token> address names, when `reply` is the admin's PUBLISH."""
    settings = deps.settings
    # Token dates have a day's resolution: let them through a day late; the exact deadline is checked below.
    max_days = math.ceil(settings.announce.confirm_ttl_hours / 24) + 1
    try:
        payload = verify(token, kind=TokenKind.CONFIRM, secrets=settings.tokens.secrets, today=now.date(),
                         max_age_days=max_days)
    except InvalidToken as exc:
        return Refusal(CONFIRMATION_EXPIRED if exc.reason is TokenError.EXPIRED else BAD_CONFIRMATION,
                       f"confirmation token: {exc}")
    announcement_id, admin_id = payload.ids
    announcement = await session.scalar(
        select(Announcement).where(Announcement.id == announcement_id).with_for_update()
    )
    if announcement is None or announcement.author_id != admin_id:
        return Refusal(BAD_CONFIRMATION, f"confirmation of unknown announcement {announcement_id}")
    sender = await queries.user_by_email(session, reply.from_address) if reply.from_address else None
    if sender is None or sender.id != admin_id:
        return Refusal(NOT_THE_ADMIN, f"confirmation of announcement {announcement_id} from "
                                      f"{reply.from_address or '(no From)'}")
    if announcement.status == AnnouncementStatus.PUBLISHED.value:
        return Refusal(CONFIRMATION_USED, f"announcement {announcement_id} already published")
    if announcement.status != AnnouncementStatus.AWAITING_CONFIRMATION.value:
        return Refusal(BAD_CONFIRMATION, f"announcement {announcement_id} is {announcement.status}")
    if now > confirm_expires_at(settings, announcement):
        return Refusal(CONFIRMATION_EXPIRED, f"confirmation of announcement {announcement_id} after its deadline")
    if not sender.is_admin or sender.status != UserStatus.ACTIVE:
        return Refusal(NOT_THE_ADMIN, f"user {sender.id} is no longer an active admin")
    if not says_publish(extract_content(reply).text):
        return Refusal(NOT_CONFIRMED, f"confirmation of announcement {announcement_id} does not begin with PUBLISH")
    inbound = None if announcement.inbound_id is None else await session.scalar(
        select(InboundMessage).where(InboundMessage.id == announcement.inbound_id)
    )
    if inbound is None or not inbound.raw:
        return Refusal(ANNOUNCEMENT_GONE, f"announcement {announcement_id}: the held message is gone")
    original = parse_message(inbound.raw)
    content = confirmed_content(extract_content(original))
    subject = original.subject.strip() or NO_SUBJECT
    if not await confirmation_sent_for(session, announcement_id, subject=subject, text=content.text):
        return Refusal(ANNOUNCEMENT_CHANGED,
                       f"announcement {announcement_id}: its text differs from what the confirmation showed")
    return await publish(session, deps, author=sender, parsed=dataclasses.replace(original, attachments=()),
                         content=content, source=Source(inbound.source), now=now, verified=VerifiedBy.CONFIRMATION,
                         announcement=announcement)
