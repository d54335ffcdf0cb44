"""Per-post notifications: one email per "each" subscriber of the post's category, and per asker, never the
author.

Askers hear back (Discourse's defaults): the author of the topic and the author of the post replied to get the
reply, and with ``notify_replies = all`` so does everyone who posted in the topic, unless they turned replies
off, muted the category, or already get the post through an "each" subscription: one copy per person.

Fan-out does the shared work once per post and only the per-recipient work per recipient (see ``fanout``):
per recipient a reply, an unsubscribe and a bounce token are signed and the prototype is filled in.

Threading: every recipient gets the same Message-ID for a post (recorded in ``message_refs``, so replies to
it find the post). The first post of a topic has no In-Reply-To. A reply's References name, for each ancestor
from the topic's first post down to the parent, our notification's Message-ID and then that of the mail the
ancestor arrived as (when it came by mail): a follower's client holds ours, the asker's client holds the mail
they sent, and either threads the answer. In-Reply-To is the parent's original Message-ID where it has one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    NotifyReplies,
    OutboxKind,
    Post,
    PostStatus,
    Source,
    SubscriptionMode,
    Topic,
    User,
    UserStatus,
)
from qaflow_mail.mail.addresses import FROM_LOCAL_PART
from qaflow_mail.mail.compose import ListHeaders, compose, list_id_value, make_message_id, via_display_name
from qaflow_mail.mail.tokens import TokenKind, sign, unsubscribe_ids
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
# Recipients built and inserted at a time: bounds memory for large categories, and how long the event loop is
# held building them (50 take 10-15 ms; the insert runs on the database thread while the loop sends mail).
BATCH = 50
MAX_ANCESTORS = 500  # References keeps the first id and the last few anyway (compose.MAX_REFERENCES)
# Posts whose Message-ID is that of a mail someone sent (and holds in their mailbox).
MAIL_SOURCES = frozenset({Source.SMTP.value, Source.LMTP.value, Source.IMAP.value, Source.IMPORT.value})
ASKER_STATUSES = (UserStatus.ACTIVE.value, UserStatus.STAGED.value)


@dataclass(frozen=True, slots=True)
class Threading:
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]


# ----------------------------------------------------------------------------------------------------------------
# Ids


def notification_message_id(post_id: int, *, domain: str, salt: str) -> str:
    """The one Message-ID (without <>) every recipient's notification of ``post_id`` carries."""
    return make_message_id(MESSAGE_ID_KIND, str(post_id), domain=domain, salt=salt)


# ----------------------------------------------------------------------------------------------------------------
# Queries


async def _each_subscribers(
    session: AsyncSession, *, category_id: int, exclude_user_id: int, after_user_id: int = 0, limit: int | None = None
) -> list[tuple[Recipient, int]]:
    """Active users following ``category_id`` post by post, except ``exclude_user_id`` (the author).

    Staged users (made from unknown senders in open categories) are left out: their address was never
    confirmed, so mailing them could send list traffic to whoever was impersonated. Disabled and bouncing
    users are left out too.
    """
    rows = await session.execute(
        select(User.id, User.email, User.token_generation)
        .join(CategorySubscription, CategorySubscription.user_id == User.id)
        .where(
            CategorySubscription.category_id == category_id,
            CategorySubscription.mode == SubscriptionMode.EACH.value,
            User.status == UserStatus.ACTIVE.value,
            User.id != exclude_user_id,
            User.id > after_user_id,
        )
        .order_by(User.id)
        .limit(limit)
    )
    return [(Recipient(user_id=uid, email=email), generation) for uid, email, generation in rows]


async def askers(session: AsyncSession, post: Post, *, category_id: int) -> list[tuple[Recipient, int]]:
    """Who hears back about ``post`` without following its category post by post: the topic's author and the
    parent's author (unless their notify_replies is off), and with "all" everyone who posted in the topic.
    Never the post's own author, nobody who muted the category, nobody disabled or bouncing."""
    if post.parent_id is None:
        return []
    topic_author = await session.scalar(select(Topic.author_id).where(Topic.id == post.topic_id))
    parent_author = await session.scalar(select(Post.author_id).where(Post.id == post.parent_id))
    posters = set(
        (await session.scalars(
            select(Post.author_id).where(Post.topic_id == post.topic_id,
                                         Post.status == PostStatus.PUBLISHED.value).distinct()
        )).all()
    )
    direct = {uid for uid in (topic_author, parent_author) if uid is not None}
    candidates = (direct | posters) - {post.author_id}
    if not candidates:
        return []
    muted = set(
        (await session.scalars(
            select(CategorySubscription.user_id).where(
                CategorySubscription.category_id == category_id,
                CategorySubscription.mode == SubscriptionMode.MUTE.value,
                CategorySubscription.user_id.in_(candidates),
            )
        )).all()
    )
    rows = await session.execute(
        select(User.id, User.email, User.token_generation, User.notify_replies)
        .where(User.id.in_(candidates - muted), User.status.in_(ASKER_STATUSES))
        .order_by(User.id)
    )
    chosen = []
    for uid, email, generation, preference in rows:
        wanted = preference == NotifyReplies.ALL.value or (preference == NotifyReplies.DIRECT.value
                                                            and uid in direct)
        if wanted:
            chosen.append((Recipient(user_id=uid, email=email), generation))
    return chosen


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


async def threading_for(session: AsyncSession, post: Post, *, domain: str, salt: str) -> Threading:
    ancestors = await ancestor_ids(session, post)
    originals: dict[int, str] = {}
    if ancestors:
        rows = await session.execute(select(Post.id, Post.message_id, Post.source).where(Post.id.in_(ancestors)))
        originals = {pid: mid for pid, mid, source in rows if source in MAIL_SOURCES and mid}
    references: list[str] = []
    for pid in ancestors:
        ours = notification_message_id(pid, domain=domain, salt=salt)
        references.extend(mid for mid in (ours, originals.get(pid)) if mid and mid not in references)
    parent_original = originals.get(ancestors[-1]) if ancestors else None
    return Threading(
        message_id=notification_message_id(post.id, domain=domain, salt=salt),
        in_reply_to=parent_original or (references[-1] if references else None),
        references=tuple(references),
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
    # user id -> token generation, signed into each unsubscribe token
    generations: dict[int, int] = field(default_factory=dict)

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
            unsubscribe=sign(TokenKind.UNSUBSCRIBE,
                             unsubscribe_ids(recipient.user_id, self.category.id,
                                             self.generations.get(recipient.user_id, 0)),
                             secret=secret, issued=issued),
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
    settings: Settings, *, post: Post, topic: Topic, category: Category, author: User, placeholders: Placeholders,
    why: str = "follow",
) -> dict[str, Any]:
    return {
        "why": why,  # "follow": an "each" subscriber; "asked": the reply concerns a topic or post of theirs
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


# A prototype costs about one composition: for fewer recipients than this, each message is composed outright
# (most replies notify only the asker).
PROTOTYPE_FROM = 3


def build_messages(
    builder: NotificationBuilder, prototype: MessagePrototype | None, recipients: Sequence[Recipient]
) -> list[OutgoingMessage]:
    """One outbox message per recipient. Pure: tokens are signed with ``builder.issued`` as the issue day."""
    return fan_out(builder, prototype, recipients)


async def prepare(
    session: AsyncSession, *, settings: Settings, renderer: Renderer, post: Post, now: datetime,
    why: str = "follow", generations: dict[int, int] | None = None,
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
                        placeholders=placeholders, why=why),
    )
    return NotificationBuilder(
        settings=settings,
        post=post,
        category=category,
        threading=await threading_for(session, post, domain=settings.site.domain,
                                       salt=settings.site.message_id_salt),
        from_name=via_display_name(author_name(author), settings.site.name),
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        placeholders=placeholders,
        issued=now.date(),
        now=now,
        generations=dict(generations or {}),
    )


async def enqueue_post_notifications(
    session: AsyncSession, *, settings: Settings, renderer: Renderer, post: Post, now: datetime
) -> int:
    """Outbox rows for every "each" subscriber of ``post``'s category and every asker (see ``askers``), except
    its author, in the caller's transaction: the whole fan-out as one slice. A held post is never mailed. Returns
    how many messages were handed to the outbox (a re-run hands the same ones again and the outbox's dedupe keys
    skip them)."""
    whole = await enqueue_post_notifications_batch(session, settings=settings, renderer=renderer, post=post, now=now,
                                                   after_user_id=0, limit=None)
    return whole.handed


@dataclass(frozen=True, slots=True)
class NotifyBatch:
    handed: int  # messages handed to the outbox
    last_user_id: int  # resume after this user id
    done: bool  # nobody after last_user_id is left to notify


async def enqueue_post_notifications_batch(
    session: AsyncSession, *, settings: Settings, renderer: Renderer, post: Post, now: datetime, after_user_id: int,
    limit: int | None,
) -> NotifyBatch:
    """One resumable slice of ``enqueue_post_notifications``: the next ``limit`` "each" subscribers with a user id
    above ``after_user_id`` (all of them when ``limit`` is None), and the askers whose ids fall in the same range
    (so each person is told once, as a follower when they are one). Running every slice in turn notifies exactly
    whom the whole call would."""
    if post.status != PostStatus.PUBLISHED.value:
        return NotifyBatch(handed=0, last_user_id=after_user_id, done=True)
    topic_category = await session.scalar(select(Topic.category_id).where(Topic.id == post.topic_id))
    if topic_category is None:
        raise LookupError(f"post {post.id} has no topic")
    size = None if limit is None else max(1, limit)
    followers = await _each_subscribers(session, category_id=topic_category, exclude_user_id=post.author_id,
                                        after_user_id=after_user_id, limit=size)
    done = size is None or len(followers) < size
    upper = None if done else followers[-1][0].user_id
    following = {recipient.user_id for recipient, _ in followers}
    asking = [(r, g) for r, g in await askers(session, post, category_id=topic_category)
              if r.user_id > after_user_id and (upper is None or r.user_id <= upper) and r.user_id not in following]
    handed = 0
    for why, group in (("follow", followers), ("asked", asking)):
        if group:
            handed += await _enqueue_group(session, settings=settings, renderer=renderer, post=post, now=now,
                                           why=why, group=group)
    last = max([after_user_id, *(r.user_id for r, _ in followers), *(r.user_id for r, _ in asking)])
    return NotifyBatch(handed=handed, last_user_id=last, done=done)


async def _enqueue_group(
    session: AsyncSession, *, settings: Settings, renderer: Renderer, post: Post, now: datetime, why: str,
    group: Sequence[tuple[Recipient, int]],
) -> int:
    recipients = [recipient for recipient, _ in group]
    builder = await prepare(session, settings=settings, renderer=renderer, post=post, now=now, why=why,
                            generations={recipient.user_id: generation for recipient, generation in group})
    prototype: MessagePrototype | None = None
    if len(recipients) >= PROTOTYPE_FROM:
        try:
            prototype = builder.prototype()
        except ValueError as exc:  # never expected; composing each message is slower but still right
            log.warning("notify.no_prototype post_id=%s reason=%s", post.id, exc)
    await record_message_ref(session, message_id=builder.threading.message_id, post_id=post.id)
    handed = 0
    for start in range(0, len(recipients), BATCH):
        messages = build_messages(builder, prototype, recipients[start : start + BATCH])
        await enqueue(session, messages, now=now)
        handed += len(messages)
    log.info("notify.enqueued post_id=%s message_id=%s recipients=%d why=%s", post.id,
             builder.threading.message_id, handed, why)
    return handed
