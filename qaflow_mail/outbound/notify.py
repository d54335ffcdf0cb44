"""Per-post notifications: one email per "each" subscriber of the post's category, never the author.

Fan-out does the shared work once per post and only the per-recipient work per recipient (see ``fanout``):
per recipient a reply, an unsubscribe and a bounce token are signed and the prototype is filled in.

Threading: every recipient gets the same Message-ID for a post (recorded in ``message_refs``, so replies to
it find the post). The first post of a topic has no In-Reply-To; a reply has In-Reply-To its parent's
notification Message-ID and References the notification Message-IDs from the topic's first post down to
the parent: the ids the recipients' mail clients actually hold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from email.message import EmailMessage
from typing import Any

from markupsafe import Markup
from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import (
    Category,
    CategorySubscription,
    MessageRef,
    OutboxKind,
    Post,
    SubscriptionMode,
    Topic,
    User,
    UserStatus,
)
from qaflow_mail.mail.addresses import FROM_LOCAL_PART
from qaflow_mail.mail.compose import ListHeaders, compose, list_id_value, make_message_id, via_display_name
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.outbound.fanout import (
    MessagePrototype,
    Placeholders,
    Recipient,
    RecipientTokens,
    fan_out,
    prototype_of,
)
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import MailTemplate, Renderer, author_name
from qaflow_mail.urls import (
    bounce_address,
    category_url,
    reply_address,
    topic_url,
    unsubscribe_address,
    unsubscribe_url,
)

log = logging.getLogger(__name__)

MESSAGE_ID_KIND = "post"
MESSAGE_REF_KIND = "notification"
BATCH = 500  # recipients built and inserted at a time: bounds memory for large categories
MAX_ANCESTORS = 500  # References keeps the first id and the last few anyway (compose.MAX_REFERENCES)


@dataclass(frozen=True, slots=True)
class Threading:
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]


# ----------------------------------------------------------------------------------------------------------------
# Ids


def notification_message_id(post_id: int, *, domain: str) -> str:
    """The one Message-ID (without <>) every recipient's notification of ``post_id`` carries."""
    return make_message_id(MESSAGE_ID_KIND, str(post_id), domain=domain)


# ----------------------------------------------------------------------------------------------------------------
# Queries


async def each_subscribers(session: AsyncSession, *, category_id: int, exclude_user_id: int) -> list[Recipient]:
    """Active users following ``category_id`` post by post, except ``exclude_user_id`` (the author).

    Staged users (made from unknown senders in open categories) are left out: their address was never
    confirmed, so mailing them could send list traffic to whoever was impersonated. Disabled and bouncing
    users are left out too.
    """
    rows = await session.execute(
        select(User.id, User.email)
        .join(CategorySubscription, CategorySubscription.user_id == User.id)
        .where(
            CategorySubscription.category_id == category_id,
            CategorySubscription.mode == SubscriptionMode.EACH.value,
            User.status == UserStatus.ACTIVE.value,
            User.id != exclude_user_id,
        )
        .order_by(User.id)
    )
    return [Recipient(user_id=uid, email=email) for uid, email in rows]


async def ancestor_ids(session: AsyncSession, post: Post) -> list[int]:
    """Post ids from the topic's first post down to ``post``'s parent (empty for a first post)."""
    if post.parent_id is None:
        return []
    chain = select(Post.id, Post.parent_id, literal(1).label("depth")).where(Post.id == post.parent_id)
    cte = chain.cte("ancestors", recursive=True)
    cte = cte.union_all(
        select(Post.id, Post.parent_id, (cte.c.depth + 1).label("depth"))
        .join(cte, Post.id == cte.c.parent_id)
        .where(cte.c.depth < MAX_ANCESTORS)
    )
    rows = (await session.execute(select(cte.c.id).order_by(cte.c.depth.desc()))).scalars().all()
    ids = list(dict.fromkeys(rows))  # a corrupt cycle must not repeat ids
    first = await session.scalar(
        select(Post.id).where(Post.topic_id == post.topic_id, Post.parent_id.is_(None)).order_by(Post.id).limit(1)
    )
    if first is not None and first != post.id and (not ids or ids[0] != first):
        ids.insert(0, first)  # an orphan re-attached under a later post: still thread under the topic's start
    return ids


async def threading_for(session: AsyncSession, post: Post, *, domain: str) -> Threading:
    ancestors = await ancestor_ids(session, post)
    references = tuple(notification_message_id(pid, domain=domain) for pid in ancestors)
    return Threading(
        message_id=notification_message_id(post.id, domain=domain),
        in_reply_to=references[-1] if references else None,
        references=references,
    )


async def record_message_ref(session: AsyncSession, *, message_id: str, post_id: int) -> None:
    await session.execute(
        dialect_insert(session, MessageRef)
        .values(message_id=message_id, post_id=post_id, user_id=None, kind=MESSAGE_REF_KIND)
        .on_conflict_do_nothing(index_elements=["message_id"])
    )


# ----------------------------------------------------------------------------------------------------------------
# Building the messages


@dataclass(frozen=True, slots=True)
class NotificationBuilder:
    """Everything about one post's notification that is the same for every recipient."""

    settings: Settings
    post: Post
    category: Category
    threading: Threading
    from_name: str
    subject: str
    text: str
    html: str | None
    placeholders: Placeholders
    issued: date
    now: datetime

    def compose_for(self, recipient: str, *, reply_token: str, unsubscribe_token: str) -> EmailMessage:
        """The full message for one recipient, composed from scratch (the reference the prototype matches)."""
        ph = self.placeholders

        def fill(value: str) -> str:
            return value.replace(ph.reply_token, reply_token).replace(ph.unsubscribe_token, unsubscribe_token)

        settings = self.settings
        https = unsubscribe_url(settings, unsubscribe_token)
        return compose(
            from_name=self.from_name,
            from_address=f"{FROM_LOCAL_PART}@{settings.site.domain}",
            to=recipient,
            subject=self.subject,
            text=fill(self.text),
            html=None if self.html is None else fill(self.html),
            message_id=self.threading.message_id,
            in_reply_to=self.threading.in_reply_to,
            references=self.threading.references,
            reply_to=reply_address(settings, reply_token),
            list_headers=ListHeaders(
                list_id=list_id_value(self.category.name, slug=self.category.slug, domain=settings.site.domain),
                post=f"{self.category.slug}@{settings.site.domain}",
                archive=category_url(settings, self.category.slug),
                unsubscribe_mailto=unsubscribe_address(settings, unsubscribe_token),
                # RFC 8058 one-click needs HTTPS; a plain-http base URL (local use) keeps only the mailto.
                unsubscribe_https=https if https.lower().startswith("https://") else None,
            ),
            date=self.now,
        )

    def prototype(self) -> MessagePrototype:
        return prototype_of(self)

    def tokens_for(self, recipient: Recipient) -> RecipientTokens:
        secret, issued, post_id = self.settings.tokens.secret, self.issued, self.post.id
        return RecipientTokens(
            reply=sign(TokenKind.REPLY, (post_id, recipient.user_id), secret=secret, issued=issued),
            unsubscribe=sign(TokenKind.UNSUBSCRIBE, (recipient.user_id, self.category.id), secret=secret,
                             issued=issued),
            bounce=sign(TokenKind.BOUNCE, (recipient.user_id, post_id), secret=secret, issued=issued),
        )

    def outgoing(self, recipient: Recipient, raw: bytes, tokens: RecipientTokens) -> OutgoingMessage:
        return OutgoingMessage(
            kind=OutboxKind.NOTIFICATION,
            dedupe_key=f"notify:{self.post.id}:{recipient.user_id}",
            message_id=self.threading.message_id,
            envelope_from=bounce_address(self.settings, tokens.bounce),
            recipient=recipient.email,
            raw=raw,
            user_id=recipient.user_id,
            post_id=self.post.id,
        )

    def skipped(self, recipient: Recipient, reason: ValueError) -> None:
        log.warning("notify.skipped post_id=%s user_id=%s reason=%s", self.post.id, recipient.user_id, reason)


def _render_context(
    settings: Settings, *, post: Post, topic: Topic, category: Category, author: User, placeholders: Placeholders
) -> dict[str, Any]:
    return {
        "site": {"name": settings.site.name, "base_url": settings.site.base_url},
        "category": {"name": category.name, "slug": category.slug},
        "topic": {"id": topic.id, "subject": topic.subject, "url": topic_url(settings, topic.id)},
        "post": {
            "id": post.id,
            "author_name": author_name(author),
            "text": post.body_text,
            # body_html is stored only after the sanitiser ran; everything else is escaped by the template.
            "html": Markup(post.body_html) if post.body_html else None,
            "is_first": post.parent_id is None,
        },
        "unsubscribe_url": unsubscribe_url(settings, placeholders.unsubscribe_token),
        "unsubscribe_mailto": unsubscribe_address(settings, placeholders.unsubscribe_token),
        "reply_address": reply_address(settings, placeholders.reply_token),
    }


def build_messages(
    builder: NotificationBuilder, prototype: MessagePrototype | None, recipients: Sequence[Recipient]
) -> list[OutgoingMessage]:
    """One outbox message per recipient. Pure: tokens are signed with ``builder.issued`` as the issue day."""
    return fan_out(builder, prototype, recipients)


async def prepare(
    session: AsyncSession, *, settings: Settings, renderer: Renderer, post: Post, now: datetime
) -> NotificationBuilder:
    """Load what the notification of ``post`` needs and render it once, with placeholders."""
    topic = await session.get(Topic, post.topic_id)
    if topic is None:
        raise LookupError(f"post {post.id} has no topic")
    category = await session.get(Category, topic.category_id)
    author = await session.get(User, post.author_id)
    if category is None or author is None:
        raise LookupError(f"post {post.id}: category or author missing")
    placeholders = Placeholders.new()
    rendered = renderer.render(
        MailTemplate.NOTIFY_POST,
        _render_context(settings, post=post, topic=topic, category=category, author=author,
                        placeholders=placeholders),
    )
    return NotificationBuilder(
        settings=settings,
        post=post,
        category=category,
        threading=await threading_for(session, post, domain=settings.site.domain),
        from_name=via_display_name(author_name(author), settings.site.name),
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        placeholders=placeholders,
        issued=now.date(),
        now=now,
    )


async def enqueue_post_notifications(
    session: AsyncSession, *, settings: Settings, renderer: Renderer, post: Post, now: datetime
) -> int:
    """Outbox rows for every "each" subscriber of ``post``'s category except its author, in the caller's
    transaction. Returns how many messages were handed to the outbox (a re-run hands the same ones again
    and the outbox's dedupe keys skip them)."""
    topic_category = await session.scalar(select(Topic.category_id).where(Topic.id == post.topic_id))
    if topic_category is None:
        raise LookupError(f"post {post.id} has no topic")
    recipients = await each_subscribers(session, category_id=topic_category, exclude_user_id=post.author_id)
    if not recipients:
        return 0
    builder = await prepare(session, settings=settings, renderer=renderer, post=post, now=now)
    try:
        prototype: MessagePrototype | None = builder.prototype()
    except ValueError as exc:  # never expected; composing each message is slower but still right
        log.warning("notify.no_prototype post_id=%s reason=%s", post.id, exc)
        prototype = None
    await record_message_ref(session, message_id=builder.threading.message_id, post_id=post.id)
    handed = 0
    for start in range(0, len(recipients), BATCH):
        messages = build_messages(builder, prototype, recipients[start : start + BATCH])
        await enqueue(session, messages, now=now)
        handed += len(messages)
    log.info("notify.enqueued post_id=%s message_id=%s recipients=%d", post.id, builder.threading.message_id,
             handed)
    return handed
