"""Announcement broadcasts: a published announcement goes to every active user who has not muted announcements
(not only to subscribers of the `announcements` category).

The fan-out renders and composes the message once, with placeholder tokens (see ``fanout``); each recipient
costs two token signatures and a byte-level fill, not a render. A fan-out job writes the rows to the outbox in
slices of [announce] batch_size, one transaction each, with dedupe key ``announce:<announcement id>:<user id>``:
a re-run of the same slice adds nothing.

The broadcast has one Message-ID for everyone, mapped to the announcement's post in ``message_refs``; List-Id
``announcements.<domain>``, ``List-Post: NO``, and a List-Unsubscribe whose token carries category id 0, which
the unsubscribe handler reads as "mute announcements", and the user's token generation (so ``user rotate-tokens``
voids it as it voids every other unsubscribe link). It has no Reply-To: replies are not invited.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime
from email.message import EmailMessage
from enum import StrEnum
from typing import Any

from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import (
    ANNOUNCEMENTS_SLUG,
    Announcement,
    MessageRef,
    Outbox,
    OutboxKind,
    OutboxStatus,
    Post,
    User,
    UserStatus,
)
from qaflow_mail.mail.addresses import FROM_LOCAL_PART
from qaflow_mail.mail.compose import ListHeaders, compose, list_id_value, make_message_id, via_display_name
from qaflow_mail.mail.tokens import ANNOUNCEMENTS_CATEGORY_ID, TokenKind, sign, unsubscribe_ids
from qaflow_mail.outbound.fanout import (
    MessagePrototype,
    Placeholders,
    Recipient,
    RecipientTokens,
    fan_out,
    prototype_of,
)
from qaflow_mail.outbound.notify import NotifyBatch
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import Renderer, author_name
from qaflow_mail.urls import bounce_address, category_url, topic_url, unsubscribe_address, unsubscribe_url

log = logging.getLogger(__name__)

BROADCAST_TEMPLATE = "announce/broadcast"
MESSAGE_ID_KIND = "announce"
MESSAGE_REF_KIND = "announcement"


class AnnouncementStatus(StrEnum):
    PUBLISHED = "published"
    AWAITING_CONFIRMATION = "awaiting_confirmation"  # a confirmation mail went to the admin
    HELD = "held"  # held without a confirmation mail: the admin's confirmation rate was used up


class VerifiedBy(StrEnum):
    DKIM = "dkim"
    AUTHENTICATION_RESULTS = "authentication-results"
    CONFIRMATION = "confirmation"
    COMMAND_LINE = "cli"


def broadcast_message_id(announcement_id: int, *, domain: str, salt: str) -> str:
    return make_message_id(MESSAGE_ID_KIND, str(announcement_id), domain=domain, salt=salt)


async def audience_count(session: AsyncSession) -> int:
    count = await session.scalar(
        select(func.count(User.id)).where(User.status == UserStatus.ACTIVE.value,
                                          User.announcements_muted.is_(False))
    )
    return int(count or 0)


async def _audience_page(session: AsyncSession, *, after_id: int, limit: int) -> list[tuple[Recipient, int]]:
    """The next `limit` recipients by user id, each with their token generation (keyset pagination: each page is
    one indexed range scan)."""
    rows = await session.execute(
        select(User.id, User.email, User.token_generation)
        .where(User.status == UserStatus.ACTIVE.value, User.announcements_muted.is_(False), User.id > after_id)
        .order_by(User.id)
        .limit(limit)
    )
    return [(Recipient(user_id=uid, email=email), generation or 0) for uid, email, generation in rows]


class BroadcastBuilder:
    """Everything one broadcast shares; `messages` fills in each recipient."""

    def __init__(
        self, settings: Settings, renderer: Renderer, *, announcement: Announcement, post: Post, author: User,
        now: datetime,
    ) -> None:
        self.settings = settings
        self.announcement = announcement
        self.post = post
        self.now = now
        self.issued: date = now.date()
        self.message_id = broadcast_message_id(announcement.id, domain=settings.site.domain,
                                               salt=settings.site.message_id_salt)
        self.placeholders = Placeholders.new()
        self.generations: dict[int, int] = {}  # user id -> token generation, signed into the unsubscribe token
        rendered = renderer.render(BROADCAST_TEMPLATE, self._context(author))
        self._subject = rendered.subject
        self._text = rendered.text
        self._html = rendered.html
        self._from_name = via_display_name(author_name(author), settings.site.name)
        self.prototype: MessagePrototype | None
        try:
            self.prototype = prototype_of(self)
        except ValueError as exc:  # never expected; composing each message is slower but still right
            log.warning("announce.no_prototype announcement_id=%s reason=%s", announcement.id, exc)
            self.prototype = None

    def _context(self, author: User) -> dict[str, Any]:
        settings, post = self.settings, self.post
        token = self.placeholders.unsubscribe_token
        return {
            "site": {"name": settings.site.name, "base_url": settings.site.base_url},
            "announcement": {
                "id": self.announcement.id,
                "subject": self.announcement.subject,
                "author_name": author_name(author),
                "text": post.body_text,
                # body_html is stored only after the sanitiser ran; everything else is escaped by the template.
                "html": Markup(post.body_html) if post.body_html else None,
                "url": topic_url(settings, post.topic_id),
            },
            "unsubscribe_url": unsubscribe_url(settings, token),
            "unsubscribe_mailto": unsubscribe_address(settings, token),
        }

    def compose_for(self, recipient: str, *, reply_token: str = "", unsubscribe_token: str) -> EmailMessage:
        """The full message for one recipient; it has no Reply-To, so `reply_token` is unused."""
        settings = self.settings
        ph = self.placeholders

        def fill(value: str) -> str:
            return value.replace(ph.unsubscribe_token, unsubscribe_token)

        https = unsubscribe_url(settings, unsubscribe_token)
        domain = settings.site.domain
        return compose(
            from_name=self._from_name,
            from_address=f"{FROM_LOCAL_PART}@{domain}",
            to=recipient,
            subject=self._subject,
            text=fill(self._text),
            html=None if self._html is None else fill(self._html),
            message_id=self.message_id,
            in_reply_to=None,
            references=(),
            reply_to=None,
            list_headers=ListHeaders(
                list_id=list_id_value(f"{settings.site.name} announcements", slug=ANNOUNCEMENTS_SLUG, domain=domain),
                post=None,
                archive=category_url(settings, ANNOUNCEMENTS_SLUG),
                unsubscribe_mailto=unsubscribe_address(settings, unsubscribe_token),
                # RFC 8058 one-click needs HTTPS; a plain-http base URL (local use) keeps only the mailto.
                unsubscribe_https=https if https.lower().startswith("https://") else None,
            ),
            date=self.now,
        )

    def tokens_for(self, recipient: Recipient) -> RecipientTokens:
        secret, issued = self.settings.tokens.secret, self.issued
        return RecipientTokens(
            reply="",
            unsubscribe=sign(TokenKind.UNSUBSCRIBE,
                             unsubscribe_ids(recipient.user_id, ANNOUNCEMENTS_CATEGORY_ID,
                                             self.generations.get(recipient.user_id, 0)),
                             secret=secret, issued=issued),
            bounce=sign(TokenKind.BOUNCE, (recipient.user_id, self.post.id), secret=secret, issued=issued),
        )

    def outgoing(self, recipient: Recipient, raw: bytes, tokens: RecipientTokens) -> OutgoingMessage:
        announcement_id = self.announcement.id
        return OutgoingMessage(
            kind=OutboxKind.ANNOUNCEMENT,
            dedupe_key=f"announce:{announcement_id}:{recipient.user_id}",
            message_id=self.message_id,
            envelope_from=bounce_address(self.settings, tokens.bounce),
            recipient=recipient.email,
            raw=raw,
            user_id=recipient.user_id,
            post_id=self.post.id,
            announcement_id=announcement_id,
        )

    def skipped(self, recipient: Recipient, reason: ValueError) -> None:
        log.warning("announce.skipped announcement_id=%s user_id=%s reason=%s", self.announcement.id,
                    recipient.user_id, reason)

    def messages(self, recipients: Sequence[Recipient], generations: dict[int, int] | None = None
                 ) -> list[OutgoingMessage]:
        """The messages for ``recipients``; ``generations`` maps user ids to token generations (0 when absent)."""
        self.generations = dict(generations or {})
        return fan_out(self, self.prototype, recipients)


async def enqueue_broadcast_batch(
    session: AsyncSession, *, settings: Settings, renderer: Renderer, announcement: Announcement, post: Post,
    author: User, now: datetime, after_user_id: int, limit: int,
) -> NotifyBatch:
    """One slice of the broadcast: the audience after ``after_user_id``, ``limit`` of them (a fan-out job
    runs the slices in turn, one transaction each, and resumes after the last user id done). ``now`` must be the
    job's own time, so every slice renders and signs alike."""
    builder = BroadcastBuilder(settings, renderer, announcement=announcement, post=post, author=author, now=now)
    if after_user_id == 0:
        await session.execute(
            dialect_insert(session, MessageRef)
            .values(message_id=builder.message_id, post_id=post.id, user_id=None, kind=MESSAGE_REF_KIND)
            .on_conflict_do_nothing(index_elements=["message_id"])
        )
    page = await _audience_page(session, after_id=after_user_id, limit=max(1, limit))
    if not page:
        return NotifyBatch(handed=0, last_user_id=after_user_id, done=True)
    messages = builder.messages([recipient for recipient, _ in page],
                                {recipient.user_id: generation for recipient, generation in page})
    await enqueue(session, messages, now=now, chunk=max(1, limit))
    return NotifyBatch(handed=len(messages), last_user_id=page[-1][0].user_id, done=len(page) < limit)


async def announcement_status(session: AsyncSession, announcement_id: int) -> dict[str, int]:
    """How many broadcast messages of the announcement are queued (pending or being sent), sent and failed."""
    rows = await session.execute(
        select(Outbox.status, func.count(Outbox.id))
        .where(Outbox.announcement_id == announcement_id, Outbox.kind == OutboxKind.ANNOUNCEMENT.value)
        .group_by(Outbox.status)
    )
    counts = dict(rows.all())
    return {
        "queued": int(counts.get(OutboxStatus.PENDING.value, 0)) + int(counts.get(OutboxStatus.SENDING.value, 0)),
        "sent": int(counts.get(OutboxStatus.SENT.value, 0)),
        "failed": int(counts.get(OutboxStatus.FAILED.value, 0)),
    }
