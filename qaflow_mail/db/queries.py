"""Small async queries over an AsyncSession. They never open, commit or close a session."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import (
    ANNOUNCEMENTS_SLUG,
    Category,
    CategorySubscription,
    MessageRef,
    PendingReference,
    Post,
    Source,
    Topic,
    User,
    UserAddress,
    UserStatus,
)
from qaflow_mail.mail.charsets import storable_line

# users.email and users.display_name column lengths: values are cut to them before the database sees them.
MAX_EMAIL_CHARS = 320
MAX_DISPLAY_NAME_CHARS = 200

# message_refs.kind of a digest's own Message-ID (it maps to no post).
DIGEST_REF_KIND = "digest"


def normalize_email(address: str) -> str:
    return address.strip().lower()


async def category_slugs(session: AsyncSession) -> set[str]:
    return set((await session.scalars(select(Category.slug))).all())


async def category_by_slug(session: AsyncSession, slug: str) -> Category | None:
    result: Category | None = await session.scalar(select(Category).where(Category.slug == slug.lower()))
    return result


async def list_categories(session: AsyncSession) -> Sequence[Category]:
    return (await session.scalars(select(Category).order_by(Category.slug))).all()


async def add_category(session: AsyncSession, *, slug: str, name: str, allow_strangers: bool) -> Category:
    category = Category(slug=slug.lower(), name=name, allow_strangers=allow_strangers)
    session.add(category)
    await session.flush()
    return category


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    address = normalize_email(email)
    user: User | None = await session.scalar(select(User).where(User.email == address))
    if user is None:
        user = await session.scalar(
            select(User).join(UserAddress, UserAddress.user_id == User.id).where(UserAddress.email == address)
        )
    return user


async def add_user(
    session: AsyncSession,
    *,
    email: str,
    display_name: str = "",
    is_admin: bool = False,
    status: UserStatus = UserStatus.ACTIVE,
    now: datetime,
) -> User:
    user = User(
        email=storable_line(normalize_email(email))[:MAX_EMAIL_CHARS],
        display_name=storable_line(display_name).strip()[:MAX_DISPLAY_NAME_CHARS],
        is_admin=is_admin,
        status=status,
        created_at=now,
    )
    session.add(user)
    await session.flush()
    return user


async def list_users(session: AsyncSession) -> Sequence[User]:
    return (await session.scalars(select(User).order_by(User.email))).all()


async def posts_by_message_ids(session: AsyncSession, message_ids: Collection[str]) -> dict[str, int]:
    """Map each known id (a post's own, or one we sent for it) to its post id, in two queries."""
    if not message_ids:
        return {}
    ids = list(message_ids)
    found: dict[str, int] = {
        mid: pid for mid, pid in await session.execute(select(Post.message_id, Post.id).where(Post.message_id.in_(ids)))
    }
    refs = await session.execute(
        select(MessageRef.message_id, MessageRef.post_id).where(
            MessageRef.message_id.in_(ids), MessageRef.post_id.is_not(None)
        )
    )
    for mid, post_id in refs:
        if post_id is not None:
            found.setdefault(mid, post_id)
    return found


async def find_digest_reference(session: AsyncSession, message_ids: Iterable[str]) -> MessageRef | None:
    """The digest among `message_ids` (a reply's In-Reply-To and References), if it answers one of ours."""
    ids = [mid for mid in message_ids if mid]
    if not ids:
        return None
    ref: MessageRef | None = await session.scalar(
        select(MessageRef).where(MessageRef.message_id.in_(ids), MessageRef.kind == DIGEST_REF_KIND).limit(1)
    )
    return ref


async def create_topic(
    session: AsyncSession, *, category_id: int, author_id: int, subject: str, now: datetime
) -> Topic:
    topic = Topic(category_id=category_id, author_id=author_id, subject=subject, created_at=now, last_post_at=now)
    session.add(topic)
    await session.flush()
    return topic


async def _may_join(session: AsyncSession, post: Post, topic_id: int) -> bool:
    """Whether `post`'s author could have replied in `topic_id` directly: never in announcements (published
    only), and a staged user only where strangers may post."""
    target = (
        await session.execute(
            select(Category.slug, Category.allow_strangers)
            .join(Topic, Topic.category_id == Category.id)
            .where(Topic.id == topic_id)
        )
    ).first()
    if target is None or target.slug == ANNOUNCEMENTS_SLUG:
        return False
    author = await session.get(User, post.author_id)
    welcome = target.allow_strangers or post.source == Source.IMPORT  # as authorize_sender admits staged users
    return author is not None and (author.status != UserStatus.STAGED or welcome)


async def topics_waiting_for(session: AsyncSession, message_ids: Sequence[str], *, category_id: int) -> dict[str, int]:
    """Missing Message-IDs among `message_ids` that posts of this category name, each with such a post's topic
    (the earliest post's): replies that share a missing ancestor belong to one topic (mail.threads). A pending
    reference with a negative position is such an ancestor beyond the post's parent: it joins, never re-parents."""
    if not message_ids:
        return {}
    rows = await session.execute(
        select(PendingReference.message_id, Post.topic_id)
        .join(Post, Post.id == PendingReference.post_id)
        .join(Topic, Topic.id == Post.topic_id)
        .where(PendingReference.message_id.in_(list(message_ids)), Topic.category_id == category_id)
        .order_by(Post.id)
    )
    found: dict[str, int] = {}
    for mid, topic_id in rows:
        found.setdefault(mid, topic_id)
    return found


async def _descends_from(session: AsyncSession, post: Post, ancestor_id: int) -> bool:
    """Whether `ancestor_id` is `post` or one of its ancestors (a broken chain that loops ends the walk)."""
    seen: set[int] = set()
    current: Post | None = post
    while current is not None and current.id not in seen:
        if current.id == ancestor_id:
            return True
        seen.add(current.id)
        current = None if current.parent_id is None else await session.get(Post, current.parent_id)
    return False


async def reattach_orphans(session: AsyncSession, *, parent: Post) -> int:
    """Posts that named `parent`'s Message-ID before it arrived are placed under it now.

    An orphan that started a topic brings that topic's posts into parent's topic (if its author could have posted
    there); one already in parent's topic gets `parent` as its parent when `parent` is nearer than its current
    one (pending references are kept for the candidates nearer than the one that matched). Returns the count.
    """
    pending = (
        await session.execute(
            select(PendingReference.post_id, PendingReference.position).where(
                PendingReference.message_id == parent.message_id, PendingReference.position >= 0
            )
        )
    ).all()
    # ids kept only so that later replies naming them join the topic (negative positions) have arrived: done
    await session.execute(
        delete(PendingReference).where(PendingReference.message_id == parent.message_id, PendingReference.position < 0)
    )
    attached = 0
    for orphan_id, position in pending:
        orphan = await session.get(Post, orphan_id)
        if orphan is None or orphan.id == parent.id:
            continue
        if await _descends_from(session, parent, orphan.id):
            # A names B and B names A: attaching would close a cycle and leave the topic without a first post.
            await session.execute(delete(PendingReference).where(PendingReference.post_id == orphan.id,
                                                                 PendingReference.position >= position))
            continue
        if orphan.topic_id != parent.topic_id:
            if orphan.parent_id is not None or not await _may_join(session, orphan, parent.topic_id):
                continue  # threaded elsewhere since, or its author may not post in parent's category
            old_topic_id = orphan.topic_id
            await session.execute(update(Post).where(Post.topic_id == old_topic_id).values(topic_id=parent.topic_id))
            await session.execute(delete(Topic).where(Topic.id == old_topic_id))
        orphan.topic_id = parent.topic_id
        orphan.parent_id = parent.id
        await session.execute(
            delete(PendingReference).where(PendingReference.post_id == orphan.id, PendingReference.position >= position)
        )
        attached += 1
    if attached:
        latest = await session.scalar(select(func.max(Post.created_at)).where(Post.topic_id == parent.topic_id))
        topic = await session.get(Topic, parent.topic_id)
        if topic is not None and latest is not None and latest > topic.last_post_at:
            topic.last_post_at = latest
    return attached


async def reattach_waiting(session: AsyncSession) -> int:
    """Re-attach orphans whose parent is stored by now: the sweep for a reply and its parent that were committed
    at the same moment, each invisible to the other's transaction."""
    parents = (
        await session.scalars(
            select(Post)
            .join(PendingReference, PendingReference.message_id == Post.message_id)
            .where(PendingReference.position >= 0)
            .distinct()
        )
    ).all()
    return sum([await reattach_orphans(session, parent=parent) for parent in parents])


async def topic_posts(session: AsyncSession, topic_id: int) -> list[tuple[Post, str]]:
    stmt = (
        select(Post, User.email)
        .join(User, User.id == Post.author_id)
        .where(Post.topic_id == topic_id)
        .order_by(Post.parent_id.is_not(None), Post.created_at, Post.id)  # the opening post first
    )
    return [(post, email) for post, email in await session.execute(stmt)]


async def subscriptions_of(session: AsyncSession, user_id: int) -> list[tuple[CategorySubscription, str]]:
    stmt = (
        select(CategorySubscription, Category.slug)
        .join(Category, Category.id == CategorySubscription.category_id)
        .where(CategorySubscription.user_id == user_id)
        .order_by(Category.slug)
    )
    return [(subscription, slug) for subscription, slug in await session.execute(stmt)]
