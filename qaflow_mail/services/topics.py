"""The read side of the forum: latest topics, a category's topics, a topic with its posts, author cards, counts.

Everything here is what anyone may see: only published posts, only categories that are not private, and people by
their display name (a masked form when they have none), never by address. The web pages, the feeds, the mbox
export and the ``topics`` / ``topic show`` commands all read through these functions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Select, String, and_, bindparam, cast, exists, func, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Attachment, Category, MessageRef, Post, PostStatus, Topic, User
from qaflow_mail.outbound.notify import notification_message_id, record_message_ref

PUBLISHED = PostStatus.PUBLISHED.value
MAX_NAME_CHARS = 64

# Addresses inside post bodies (signatures, quoted headers): masked on every page, feed and export.
_ADDRESS_RE = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)


# ----------------------------------------------------------------------------------------------------------------
# How people and their words are shown (pure)


def masked_local_part(address: str) -> str:
    """'al…' for 'alice@example.org': enough to tell two nameless people apart, never the address."""
    local = address.partition("@")[0]
    return f"{local[:2]}…" if local else "…"


def public_name(display_name: str, email: str) -> str:
    """The name a page shows: the display name (an address used as one is masked), else the masked address."""
    name = " ".join(display_name.split())
    if not name or "@" in name:
        return masked_local_part(email)
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1].rstrip() + "…"


def redact_addresses(text: str) -> str:
    """``text`` with every email address masked (reply tokens and other people's addresses never show)."""
    return _ADDRESS_RE.sub(lambda match: masked_local_part(match.group(0)) + "@…", text)


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class CategoryInfo:
    id: int
    slug: str
    name: str
    topic_count: int = 0


@dataclass(frozen=True, slots=True)
class TopicRow:
    id: int
    subject: str
    category_slug: str
    category_name: str
    author: str
    created_at: datetime
    last_post_at: datetime
    replies: int
    views: int


@dataclass(frozen=True, slots=True)
class TopicPage:
    rows: list[TopicRow]
    page: int
    has_next: bool


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    id: int
    filename: str
    content_type: str
    size: int
    content_id: str | None
    inline: bool


@dataclass(frozen=True, slots=True)
class PostView:
    id: int
    author_id: int
    author: str
    parent_id: int | None
    message_id: str
    subject: str
    body_text: str
    body_html: str | None
    created_at: datetime
    attachments: list[AttachmentInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AuthorCard:
    name: str
    role: str
    posts: int
    member_since: datetime


@dataclass(frozen=True, slots=True)
class TopicView:
    id: int
    subject: str
    category: CategoryInfo
    created_at: datetime
    last_post_at: datetime
    views: int
    posts: list[PostView]
    author: AuthorCard

    @property
    def replies(self) -> int:
        return max(len(self.posts) - 1, 0)


@dataclass(frozen=True, slots=True)
class AttachmentFile:
    filename: str
    content_type: str
    content: bytes


# ----------------------------------------------------------------------------------------------------------------
# Queries


def _has_published_post() -> object:
    return exists().where(Post.topic_id == Topic.id, Post.status == PUBLISHED)


def _visible_topics() -> Select[Topic, Category, User]:
    return (
        select(Topic, Category, User)
        .join(Category, Category.id == Topic.category_id)
        .join(User, User.id == Topic.author_id)
        .where(Category.private.is_(False), _has_published_post())  # type: ignore[arg-type]
    )


async def public_categories(session: AsyncSession) -> list[CategoryInfo]:
    """Every category that is not private, with its count of visible topics, by name."""
    counts = await topic_counts(session)
    return [CategoryInfo(id=c.id, slug=c.slug, name=c.name, topic_count=counts.get(c.id, 0))
            for c in await public_category_names(session)]


async def public_category_names(session: AsyncSession) -> list[CategoryInfo]:
    """Every category that is not private, by name, without counts (cheap: read on every list page)."""
    rows = await session.execute(
        select(Category.id, Category.slug, Category.name)
        .where(Category.private.is_(False))
        .order_by(Category.name, Category.slug)
    )
    return [CategoryInfo(id=cid, slug=slug, name=name) for cid, slug, name in rows]


async def topic_counts(session: AsyncSession) -> dict[int, int]:
    """Topics with a published post, per category id (costly: a probe per topic; callers cache it)."""
    rows = await session.execute(
        select(Topic.category_id, func.count(Topic.id))
        .where(_has_published_post())  # type: ignore[arg-type]
        .group_by(Topic.category_id)
    )
    return {category_id: n for category_id, n in rows}


async def forum_state(session: AsyncSession) -> tuple[object, ...]:
    """A cheap fingerprint that changes whenever a topic may have appeared in or left the lists: a new post or
    topic (the highest ids) or a post's status decided (the count of posts not published, from a partial index)."""
    row = (await session.execute(select(
        select(func.max(Post.id)).scalar_subquery(),
        select(func.max(Topic.id)).scalar_subquery(),
        select(func.count(Post.id)).where(Post.status != PUBLISHED).scalar_subquery(),
    ))).one()
    return tuple(row)


async def public_category(session: AsyncSession, slug: str) -> CategoryInfo | None:
    category = await queries.category_by_slug(session, slug)
    if category is None or category.private:
        return None
    return CategoryInfo(id=category.id, slug=category.slug, name=category.name)


def _published_count() -> ScalarSelect[int]:
    """The topic's published posts, for a statement over topics."""
    return (select(func.count(Post.id)).where(Post.topic_id == Topic.id, Post.status == PUBLISHED)
            .correlate(Topic).scalar_subquery())


async def latest_topics(
    session: AsyncSession, *, category_id: int | None = None, page: int = 1, per_page: int = 30
) -> TopicPage:
    """Visible topics, most recent activity first, one page of them (``page`` counts from 1): one statement."""
    page = max(page, 1)
    stmt = (
        select(Topic.id, Topic.subject, Category.slug, Category.name, User.display_name, User.email,
               Topic.created_at, Topic.last_post_at, Topic.views, _published_count())
        .join(Category, Category.id == Topic.category_id)
        .join(User, User.id == Topic.author_id)
        .where(Category.private.is_(False), _has_published_post())  # type: ignore[arg-type]
        .order_by(Topic.last_post_at.desc(), Topic.id.desc())
    )
    if category_id is not None:
        stmt = stmt.where(Topic.category_id == category_id)
    found = (await session.execute(stmt.offset((page - 1) * per_page).limit(per_page + 1))).all()
    rows = [
        TopicRow(id=tid, subject=subject, category_slug=slug, category_name=cname, author=public_name(name, email),
                 created_at=created, last_post_at=last, replies=max(posts - 1, 0), views=views)
        for tid, subject, slug, cname, name, email, created, last, views, posts in found[:per_page]
    ]
    return TopicPage(rows=rows, page=page, has_next=len(found) > per_page)


async def _attachments_of(session: AsyncSession, post_ids: Sequence[int]) -> dict[int, list[AttachmentInfo]]:
    by_post: dict[int, list[AttachmentInfo]] = {}
    if not post_ids:
        return by_post
    rows = await session.execute(
        select(Attachment.id, Attachment.post_id, Attachment.filename, Attachment.content_type, Attachment.size,
               Attachment.content_id, Attachment.inline)
        .where(Attachment.post_id.in_(post_ids))
        .order_by(Attachment.id)
    )
    for att_id, post_id, filename, content_type, size, content_id, inline in rows:
        by_post.setdefault(post_id, []).append(
            AttachmentInfo(id=att_id, filename=filename, content_type=content_type, size=size,
                           content_id=content_id, inline=inline)
        )
    return by_post


async def author_card(session: AsyncSession, user: User) -> AuthorCard:
    posts = await session.scalar(
        select(func.count(Post.id))
        .join(Topic, Topic.id == Post.topic_id)
        .join(Category, Category.id == Topic.category_id)
        .where(Post.author_id == user.id, Post.status == PUBLISHED, Category.private.is_(False))
    )
    return AuthorCard(name=public_name(user.display_name, user.email),
                      role="Administrator" if user.is_admin else "Member", posts=posts or 0,
                      member_since=user.created_at)


async def topic_summary(session: AsyncSession, topic_id: int) -> tuple[Topic, CategoryInfo] | None:
    """The topic and its category when anyone may see it (cheap: for ETags and feeds)."""
    row = (await session.execute(_visible_topics().where(Topic.id == topic_id))).first()
    if row is None:
        return None
    topic, category, _user = row
    return topic, CategoryInfo(id=category.id, slug=category.slug, name=category.name)


@dataclass(frozen=True, slots=True)
class TopicFreshness:
    """What a topic page shows, in brief: when any of it changes (a post published, held, rejected or added, the
    topic's views, a name, the category renamed or turned private), ``key`` changes. Read in one statement from
    the database, so that a page cached by one node is never served after another node changed the topic."""

    topic_id: int
    last_post_at: datetime
    key: str


def _author_names_aggregate(dialect: str, value: ColumnElement[str]) -> ColumnElement[str]:
    if dialect == "postgresql":
        return func.string_agg(value, "\x1f")
    return func.group_concat(value, "\x1f")


@functools.cache
def _freshness_statement(dialect: str) -> Select[*tuple[Any, ...]]:
    """Built once per backend (building it is costlier than running it); ``topic_id`` is bound per call."""
    author = aliased(User)
    post_author = aliased(User)
    topic_id = bindparam("topic_id", type_=BigInteger())
    published = (
        select(func.count(Post.id), func.coalesce(func.sum(Post.id), 0),
               _author_names_aggregate(dialect, cast(Post.id, String) + " " + post_author.display_name + " "
                                       + post_author.email).label("names"))
        .join(post_author, post_author.id == Post.author_id)
        .where(Post.topic_id == topic_id, Post.status == PUBLISHED)
        .subquery()
    )
    return (
        select(Topic.last_post_at, Topic.views, Topic.subject, Category.id, Category.slug, Category.name,
               author.display_name, author.email, author.is_admin, author.created_at, *published.c)
        .join(Category, Category.id == Topic.category_id)
        .join(author, author.id == Topic.author_id)
        .join(published, true())  # one row of aggregates
        .where(Topic.id == topic_id, Category.private.is_(False))
    )


async def topic_freshness(session: AsyncSession, topic_id: int) -> TopicFreshness | None:
    """The topic's freshness when anyone may see it (a public category, at least one published post), else None.
    The topic author's post count on the author card is not part of it (callers bound its age)."""
    statement = _freshness_statement(session.get_bind().dialect.name)
    row = (await session.execute(statement, {"topic_id": topic_id})).first()
    if row is None or not row[10]:  # no published post
        return None
    *head, names = row
    names_sorted = "\x1f".join(sorted((names or "").split("\x1f")))
    key = "\x00".join([*map(str, head), names_sorted])
    return TopicFreshness(topic_id=topic_id, last_post_at=row[0], key=key)


async def topic_with_posts(session: AsyncSession, topic_id: int) -> TopicView | None:
    """A visible topic with its published posts (the opening post first, then by time), or None."""
    row = (await session.execute(_visible_topics().where(Topic.id == topic_id))).first()
    if row is None:
        return None
    topic, category, topic_author = row
    posts = (
        await session.execute(
            select(Post, User.display_name, User.email)
            .join(User, User.id == Post.author_id)
            .where(Post.topic_id == topic_id, Post.status == PUBLISHED)
            .order_by(Post.parent_id.is_not(None), Post.created_at, Post.id)
        )
    ).all()
    attachments = await _attachments_of(session, [post.id for post, _n, _e in posts])
    return TopicView(
        id=topic.id, subject=topic.subject,
        category=CategoryInfo(id=category.id, slug=category.slug, name=category.name),
        created_at=topic.created_at, last_post_at=topic.last_post_at, views=topic.views,
        posts=[
            PostView(id=post.id, author_id=post.author_id, author=public_name(name, email), parent_id=post.parent_id,
                     message_id=post.message_id, subject=post.subject, body_text=post.body_text,
                     body_html=post.body_html, created_at=post.created_at,
                     attachments=attachments.get(post.id, []))
            for post, name, email in posts
        ],
        author=await author_card(session, topic_author),
    )


async def visible_post_topic(session: AsyncSession, post_id: int) -> int | None:
    """The topic of a published post in a public category, else None."""
    topic_id: int | None = await session.scalar(
        select(Post.topic_id)
        .join(Topic, Topic.id == Post.topic_id)
        .join(Category, Category.id == Topic.category_id)
        .where(Post.id == post_id, Post.status == PUBLISHED, Category.private.is_(False))
    )
    return topic_id


async def post_by_message_id(session: AsyncSession, message_id: str) -> tuple[int, int] | None:
    """(topic id, post id) of the visible post a Message-ID names: the mail that made it, or our notification."""
    bare = message_id.strip().strip("<>").strip()
    if not bare:
        return None
    post_id = (await queries.posts_by_message_ids(session, [bare])).get(bare)
    if post_id is None:
        return None
    topic_id = await visible_post_topic(session, post_id)
    return None if topic_id is None else (topic_id, post_id)


async def reply_message_ids(session: AsyncSession, settings: Settings, post_ids: Sequence[int]) -> dict[int, str]:
    """Our own Message-ID of each post (the one its notification carries), recorded so that a reply naming it
    threads even when no notification was ever sent. Writes only the missing records; the caller commits."""
    ids = {post_id: notification_message_id(post_id, domain=settings.site.domain,
                                               salt=settings.site.message_id_salt) for post_id in post_ids}
    if not ids:
        return ids
    known = set((await session.scalars(select(MessageRef.message_id).where(MessageRef.message_id.in_(ids.values()))))
                .all())
    for post_id, message_id in ids.items():
        if message_id not in known:
            await record_message_ref(session, message_id=message_id, post_id=post_id)
    return ids


async def attachment_file(session: AsyncSession, attachment_id: int) -> AttachmentFile | None:
    """An attachment's bytes when its post is published in a public category."""
    row = (
        await session.execute(
            select(Attachment.filename, Attachment.content_type, Attachment.content)
            .join(Post, Post.id == Attachment.post_id)
            .join(Topic, Topic.id == Post.topic_id)
            .join(Category, Category.id == Topic.category_id)
            .where(Attachment.id == attachment_id, Post.status == PUBLISHED, Category.private.is_(False))
        )
    ).first()
    if row is None:
        return None
    filename, content_type, content = row
    return AttachmentFile(filename=filename, content_type=content_type, content=content)


@dataclass(frozen=True, slots=True)
class FeedEntry:
    post_id: int
    topic_id: int
    topic_subject: str
    is_first: bool
    author: str
    created_at: datetime
    body_text: str
    body_html: str | None


async def latest_posts(
    session: AsyncSession, *, category_id: int | None = None, topic_id: int | None = None, limit: int = 30
) -> list[FeedEntry]:
    """The newest visible posts (for feeds), newest first."""
    stmt = (
        select(Post, Topic.subject, User.display_name, User.email)
        .join(Topic, Topic.id == Post.topic_id)
        .join(Category, Category.id == Topic.category_id)
        .join(User, User.id == Post.author_id)
        .where(Post.status == PUBLISHED, Category.private.is_(False))
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(limit)
    )
    if category_id is not None:
        stmt = stmt.where(Topic.category_id == category_id)
    if topic_id is not None:
        stmt = stmt.where(Post.topic_id == topic_id)
    return [
        FeedEntry(post_id=post.id, topic_id=post.topic_id, topic_subject=subject, is_first=post.parent_id is None,
                  author=public_name(name, email), created_at=post.created_at, body_text=post.body_text,
                  body_html=post.body_html)
        for post, subject, name, email in await session.execute(stmt)
    ]


async def add_views(session: AsyncSession, counts: dict[int, int]) -> None:
    """Add a batch of page views to their topics (one statement per distinct count)."""
    by_count: dict[int, list[int]] = {}
    for topic_id, n in counts.items():
        by_count.setdefault(n, []).append(topic_id)
    for n, topic_ids in by_count.items():
        await session.execute(
            update(Topic).where(and_(Topic.id.in_(topic_ids))).values(views=Topic.views + n)
        )


# ----------------------------------------------------------------------------------------------------------------
# The command line's view (administrators: every category, every post status)


@dataclass(frozen=True, slots=True)
class AdminTopic:
    id: int
    category: str
    subject: str
    author: str
    posts: int
    views: int
    created_at: datetime
    last_post_at: datetime


async def admin_topics(session: AsyncSession, *, category_slug: str | None = None) -> list[AdminTopic]:
    """Every topic for the operator (published post counts, authors by address), newest activity first."""
    counts = (
        select(Post.topic_id, func.count(Post.id).label("n"))
        .where(Post.status == PUBLISHED)
        .group_by(Post.topic_id)
        .subquery()
    )
    stmt = (
        select(Topic, Category.slug, User.email, counts.c.n)
        .join(Category, Category.id == Topic.category_id)
        .join(User, User.id == Topic.author_id)
        .outerjoin(counts, counts.c.topic_id == Topic.id)
        .order_by(Topic.last_post_at.desc(), Topic.id.desc())
    )
    if category_slug:
        stmt = stmt.where(Category.slug == category_slug.lower())
    return [
        AdminTopic(id=topic.id, category=slug, subject=topic.subject, author=email, posts=n or 0,
                   views=topic.views, created_at=topic.created_at, last_post_at=topic.last_post_at)
        for topic, slug, email, n in await session.execute(stmt)
    ]


@dataclass(frozen=True, slots=True)
class AdminPost:
    id: int
    author: str
    message_id: str
    parent_id: int | None
    subject: str
    status: str
    created_at: datetime
    body: str


@dataclass(frozen=True, slots=True)
class AdminTopicDetail:
    id: int
    category: str
    private: bool
    subject: str
    views: int
    created_at: datetime
    last_post_at: datetime
    posts: list[AdminPost]


async def admin_topic(session: AsyncSession, topic_id: int) -> AdminTopicDetail | None:
    """One topic with every post (any status) for the operator, or None."""
    topic = await session.get(Topic, topic_id)
    if topic is None:
        return None
    category = await session.get(Category, topic.category_id)
    assert category is not None  # a foreign key
    rows = await session.execute(
        select(Post, User.email)
        .join(User, User.id == Post.author_id)
        .where(Post.topic_id == topic_id)
        .order_by(Post.parent_id.is_not(None), Post.created_at, Post.id)
    )
    return AdminTopicDetail(
        id=topic.id, category=category.slug, private=category.private, subject=topic.subject, views=topic.views,
        created_at=topic.created_at, last_post_at=topic.last_post_at,
        posts=[AdminPost(id=p.id, author=email, message_id=p.message_id, parent_id=p.parent_id, subject=p.subject,
                         status=p.status, created_at=p.created_at, body=p.body_text) for p, email in rows],
    )
