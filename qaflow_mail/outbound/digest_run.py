"""Digest runs: select the users due at `now`, plan their digests in batches, and commit each batch exactly once.

Exactly once. Users are taken in batches. For a batch, what is due and new is read without locks, and each
digest is built, rendered and composed (the slow part, yielding to the event loop between users). Then one
short transaction locks those subscription rows (FOR UPDATE on PostgreSQL; on SQLite a no-op UPDATE first takes
the single write lock), keeps only the users whose subscriptions are still exactly as read, enqueues their
digests with dedupe key ``digest:<user_id>:<period>:<window end ISO>`` and moves ``last_digest_at`` to the window
end. A re-run, a second process or a restart finds nothing due, or finds it changed and leaves it; a crash
before the commit leaves everything as it was for the next run. The scheduler only decides *when* to look.

Catch-up. After downtime, the next run sends ONE digest per user covering everything since their last digest
(not one per missed period): the window simply starts at last_digest_at.

Shared digests. Users whose digests would be the same but for who they are (the same windows, time zone and
announcement setting, and no post of their own in them) share one digest built, rendered and composed once per
pass (`SharedDigest`); each of them gets it filled in with their address, name, Message-ID and signed tokens.
The cost of a pass is then one composition per distinct shape plus a few microseconds of signing and copying
per user, instead of a composition per user.

Nothing new, no digest: the subscriptions still move to the window end, so the next digest never repeats old
posts. A new subscription (last_digest_at NULL) starts at the later of its creation and the previous boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time as clock
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, false, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.config import Settings
from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import (
    ANNOUNCEMENTS_SLUG,
    Category,
    CategorySubscription,
    DigestRun,
    MessageRef,
    Post,
    SubscriptionMode,
    Topic,
    User,
    UserStatus,
)
from qaflow_mail.db.queries import DIGEST_REF_KIND
from qaflow_mail.outbound.digest_build import (
    DigestContext,
    DigestRecipient,
    PostRow,
    SharedDigest,
    SubscriptionWindow,
    TopicRow,
    build_digest,
    digest_message,
    render_digest,
)
from qaflow_mail.outbound.digest_schedule import DigestSchedule, Period, previous_boundary, window_end
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import Renderer, author_name

log = logging.getLogger(__name__)

USER_BATCH = 100  # users per transaction: bounds the time the write lock is held on SQLite
SHARED_DIGESTS_KEPT = 256  # shared digests kept for later batches of a pass (~100-200 KB each)
BODY_PREFIX_CHARS = 2000  # only this much of each post body is loaded: excerpts need no more


@dataclass(frozen=True, slots=True)
class DigestPreview:
    """Who a pass would send a digest to, for which window, and how many topics it would hold (a dry run)."""

    user_id: int
    email: str
    period: str
    start: datetime  # the earliest window start among the user's subscriptions
    end: datetime
    topics: int

    def as_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "email": self.email, "period": self.period,
                "start": self.start.isoformat(), "end": self.end.isoformat(), "topics": self.topics}


@dataclass(frozen=True, slots=True)
class DigestStats:
    period: str
    users_due: int = 0
    digests: int = 0  # handed to the outbox
    nothing_new: int = 0  # due users whose window held nothing: advanced without a digest
    subscriptions_advanced: int = 0
    raced: int = 0  # users another run (process) handled between our read and our commit
    batches: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    previews: tuple[DigestPreview, ...] = ()  # a dry run's digests; empty otherwise

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "period": self.period, "users_due": self.users_due, "digests": self.digests,
            "nothing_new": self.nothing_new, "subscriptions_advanced": self.subscriptions_advanced,
            "raced": self.raced, "batches": self.batches, "seconds": round(self.seconds, 3)}
        if self.dry_run:
            data["dry_run"] = True
            data["would_send"] = [p.as_dict() for p in self.previews]
        return data


@dataclass(slots=True)
class _BatchResult:
    digests: int = 0
    nothing_new: int = 0
    advanced: int = 0
    users: int = 0
    raced: int = 0  # planned users another run handled first: left to it


def _is_sqlite(session: AsyncSession) -> bool:
    return session.bind is None or session.bind.dialect.name == "sqlite"


def _due(last: datetime | None, end: datetime) -> bool:
    return last is None or last < end


async def due_user_ids(
    session: AsyncSession, *, period: Period, schedule: DigestSchedule, now: datetime
) -> list[int]:
    """Active users with at least one `period` subscription not yet digested up to their window end.

    Users are grouped by their timezone value (one window end each), so this is two queries whatever the
    number of users.
    """
    mode = SubscriptionMode(period.value).value
    zones = (
        await session.scalars(
            select(User.timezone)
            .join(CategorySubscription, CategorySubscription.user_id == User.id)
            .where(CategorySubscription.mode == mode, User.status == UserStatus.ACTIVE.value)
            .distinct()
        )
    ).all()
    if not zones:
        return []
    by_end: dict[datetime, list[str | None]] = defaultdict(list)
    for zone in zones:
        by_end[window_end(now, period, schedule, schedule.timezone_for(zone))].append(zone)
    conditions = []
    for end, values in by_end.items():
        names = [v for v in values if v is not None]
        in_zone: ColumnElement[bool] = User.timezone.in_(names) if names else false()
        if None in values:
            in_zone = or_(in_zone, User.timezone.is_(None))
        conditions.append(and_(in_zone, or_(CategorySubscription.last_digest_at.is_(None),
                                            CategorySubscription.last_digest_at < end)))
    ids = await session.scalars(
        select(User.id)
        .join(CategorySubscription, CategorySubscription.user_id == User.id)
        .where(CategorySubscription.mode == mode, User.status == UserStatus.ACTIVE.value, or_(*conditions))
        .distinct()
        .order_by(User.id)
    )
    return list(ids.all())


async def _subscriptions(
    session: AsyncSession, user_ids: Collection[int], mode: str
) -> list[tuple[CategorySubscription, User]]:
    rows = await session.execute(
        select(CategorySubscription, User)
        .join(User, User.id == CategorySubscription.user_id)
        .where(CategorySubscription.user_id.in_(list(user_ids)), CategorySubscription.mode == mode,
               User.status == UserStatus.ACTIVE.value)
        .order_by(CategorySubscription.id)
    )
    return [(sub, user) for sub, user in rows.all()]


async def _lock_current(session: AsyncSession, sub_ids: Collection[int]) -> dict[int, tuple[str, datetime | None]]:
    """(mode, last_digest_at) of these subscriptions, locked until the end of the transaction."""
    if _is_sqlite(session):
        # SQLite has no row locks: a write first takes the database's single write lock for this transaction,
        # so a concurrent run waits here and then reads what the other one committed.
        await session.execute(
            update(CategorySubscription).where(false()).values(mode=CategorySubscription.mode)
            .execution_options(synchronize_session=False)
        )
    rows = await session.execute(
        select(CategorySubscription.id, CategorySubscription.mode, CategorySubscription.last_digest_at)
        .where(CategorySubscription.id.in_(list(sub_ids)))
        .order_by(CategorySubscription.id)
        .with_for_update()
    )
    return {sub_id: (mode, last) for sub_id, mode, last in rows.all()}


async def _load_posts(
    session: AsyncSession, category_ids: Collection[int], low: datetime, high: datetime
) -> tuple[list[PostRow], dict[int, TopicRow]]:
    """Every post in (low, high] in these categories, with its topic: three queries for the whole batch."""
    if not category_ids:
        return [], {}
    rows = (
        await session.execute(
            select(Post.id, Post.topic_id, Post.author_id, Post.created_at,
                   func.substr(Post.body_text, 1, BODY_PREFIX_CHARS))
            .join(Topic, Topic.id == Post.topic_id)
            .where(Topic.category_id.in_(list(category_ids)), Post.created_at > low, Post.created_at <= high)
            .order_by(Post.created_at, Post.id)
        )
    ).all()
    topic_ids = sorted({r[1] for r in rows})
    if not topic_ids:
        return [], {}
    topic_rows = (
        await session.execute(
            select(Topic.id, Topic.category_id, Category.name, Category.slug, Topic.subject, Topic.author_id,
                   Topic.created_at)
            .join(Category, Category.id == Topic.category_id)
            .where(Topic.id.in_(topic_ids))
        )
    ).all()
    openings = dict(
        (await session.execute(
            select(Post.topic_id, func.min(Post.id))
            .where(Post.topic_id.in_(topic_ids), Post.parent_id.is_(None))  # the opening post
            .group_by(Post.topic_id)
        )).all()
    )
    author_ids = {r[2] for r in rows} | {t[5] for t in topic_rows}
    names = {
        uid: author_name(user)
        for uid, user in (
            (u.id, u) for u in (await session.scalars(select(User).where(User.id.in_(list(author_ids))))).all()
        )
    }
    topics = {
        tid: TopicRow(id=tid, category_id=cid, category_name=cname, subject=subject, author_id=aid,
                      author_name=names.get(aid, "someone"), created_at=created, opening_post_id=openings[tid],
                      is_announcement=slug == ANNOUNCEMENTS_SLUG)
        for tid, cid, cname, slug, subject, aid, created in topic_rows
    }
    posts = [
        PostRow(id=pid, topic_id=tid, author_id=aid, author_name=names.get(aid, "someone"), created_at=created,
                text=text or "")
        for pid, tid, aid, created, text in rows
    ]
    return posts, topics


ShapeKey = tuple[tuple[tuple[int, datetime, datetime], ...], str, bool]


@dataclass(slots=True)
class _PassCache:
    """What one pass reuses from batch to batch: the posts of the last window read (batches of one pass nearly
    always read the same), and the shared digests by their shape, oldest dropped first."""

    posts_key: tuple[frozenset[int], datetime, datetime] | None = None
    posts: tuple[list[PostRow], dict[int, TopicRow]] = ([], {})
    shared: dict[ShapeKey, SharedDigest] = field(default_factory=dict)

    async def load_posts(
        self, session: AsyncSession, category_ids: Collection[int], low: datetime, high: datetime
    ) -> tuple[list[PostRow], dict[int, TopicRow]]:
        wanted = frozenset(category_ids)
        if self.posts_key is None or (low, high) != self.posts_key[1:] or not wanted <= self.posts_key[0]:
            # Posts of other categories than a batch wants are harmless: each digest keeps its own categories.
            self.posts = await _load_posts(session, wanted, low, high)
            self.posts_key = (wanted, low, high)
            self.shared.clear()  # built from other posts
        return self.posts

    def keep(self, key: ShapeKey, shared: SharedDigest) -> SharedDigest:
        if len(self.shared) >= SHARED_DIGESTS_KEPT:
            del self.shared[next(iter(self.shared))]
        self.shared[key] = shared
        return shared


@dataclass(slots=True)
class _Plan:
    """One due user's digest, prepared without locks; committed only if their subscriptions did not move."""

    user_id: int
    seen: dict[int, datetime | None]  # subscription id -> last_digest_at when read
    advance: dict[int, datetime]  # subscription id -> its new last_digest_at
    message: OutgoingMessage | None  # None: nothing new (or no address we can mail)
    preview: DigestPreview | None = None  # set when the digest holds something


async def _plan_batch(
    session_factory: async_sessionmaker[AsyncSession],
    user_ids: Sequence[int],
    *,
    period: Period,
    schedule: DigestSchedule,
    settings: Settings,
    renderer: Renderer,
    now: datetime,
    not_after: datetime | None = None,
    render: bool = True,
    cache: _PassCache | None = None,
) -> list[_Plan]:
    """Read what is due and new (a few queries, no locks), then build, render and compose each digest, yielding
    to the event loop between users: this is the CPU-heavy part, and it holds no lock. Without `render` (a dry
    run) the digests are built and counted, never rendered."""
    mode = SubscriptionMode(period.value).value
    async with session_factory() as session:
        subscriptions = await _subscriptions(session, user_ids, mode)
        per_user: dict[int, tuple[User, ZoneInfo, datetime, list[tuple[CategorySubscription, datetime]]]] = {}
        for sub, user in subscriptions:
            tz = schedule.timezone_for(user.timezone)
            end = window_end(now, period, schedule, tz)
            if not_after is not None and end > not_after:
                end = not_after  # a pass run for a future time never moves the digest clock past real time
            if not _due(sub.last_digest_at, end):
                continue  # another run got here first
            start = sub.last_digest_at
            if start is None:
                start = max(sub.created_at, previous_boundary(end, period, schedule, tz))
            per_user.setdefault(user.id, (user, tz, end, []))[3].append((sub, start))
        if not per_user:
            return []
        wanted = {sub.category_id for _, _, _, subs in per_user.values() for sub, _ in subs}
        categories = {c.id: c for c in (await session.scalars(select(Category).where(Category.id.in_(wanted))))}
        announcements_id = await session.scalar(select(Category.id).where(Category.slug == ANNOUNCEMENTS_SLUG))
        if announcements_id is not None:
            wanted.add(announcements_id)
        starts = [start for _, _, _, subs in per_user.values() for _, start in subs]
        ends = [end for _, _, end, _ in per_user.values()]
        cache = cache if cache is not None else _PassCache()
        posts, topics = await cache.load_posts(session, wanted, min(starts), max(ends))
    own_posts: dict[int, list[PostRow]] = defaultdict(list)
    for post in posts:
        own_posts[post.author_id].append(post)

    plans: list[_Plan] = []
    for user, tz, end, subs in per_user.values():
        plan = _Plan(user_id=user.id, seen={sub.id: sub.last_digest_at for sub, _ in subs},
                     advance={sub.id: max(start, end) for sub, start in subs}, message=None)
        plans.append(plan)
        windows = [
            SubscriptionWindow(category_id=sub.category_id, category_slug=categories[sub.category_id].slug,
                               category_name=categories[sub.category_id].name, start=start, end=end)
            for sub, start in subs
            if start < end
        ]
        if not windows:
            continue
        recipient = DigestRecipient(user_id=user.id, email=user.email, name=author_name(user), timezone=tz,
                                    show_announcements=not user.announcements_muted,
                                    token_generation=user.token_generation)
        if render and not _shows_own_posts(own_posts.get(user.id, ()), windows, topics):
            # Whoever has the same windows, zone and announcement setting gets the same digest: built once.
            key: ShapeKey = (tuple((w.category_id, w.start, w.end) for w in windows), tz.key,
                             recipient.show_announcements)
            shared = cache.shared.get(key) or cache.keep(key, SharedDigest(
                period=period, windows=windows, timezone=tz, show_announcements=recipient.show_announcements,
                topics=topics, posts=posts, settings=settings, renderer=renderer, now=now))
            if shared.digest.is_empty:
                continue
            plan.preview = _preview(user, period, windows, end, shared.digest)
            with contextlib.suppress(ValueError):  # an address or a name the shared bytes cannot carry
                plan.message = shared.message_for(recipient)
            if plan.message is not None:
                if len(plans) % 20 == 0:
                    await asyncio.sleep(0)
                continue
        digest = build_digest(period=period, recipient=recipient, windows=windows, topics=topics, posts=posts,
                              settings=settings, issued=now.date())
        if digest.is_empty:
            continue
        plan.preview = _preview(user, period, windows, end, digest)
        if not render:
            continue
        rendered = render_digest(renderer, digest)
        try:
            plan.message = digest_message(settings, digest, rendered, now=now)
        except ValueError as exc:  # an address compose cannot carry: no digest, but the user still advances
            log.warning("digest.skipped user_id=%s reason=%s", user.id, exc)
        await asyncio.sleep(0)
    return plans


def _shows_own_posts(
    own: Sequence[PostRow], windows: Sequence[SubscriptionWindow], topics: dict[int, TopicRow]
) -> bool:
    """Whether any of these posts by the user could be in their digest, which leaves them out (so it is theirs
    alone): a post in a category they follow, or an announcement."""
    followed = {w.category_id for w in windows}
    return any((topic := topics.get(post.topic_id)) is not None
               and (topic.category_id in followed or topic.is_announcement) for post in own)


def _preview(
    user: User, period: Period, windows: Sequence[SubscriptionWindow], end: datetime, digest: DigestContext
) -> DigestPreview:
    return DigestPreview(user_id=user.id, email=user.email, period=period.value, start=min(w.start for w in windows),
                         end=end, topics=len(digest.new_topics) + len(digest.active_topics))


async def _commit_batch(
    session_factory: async_sessionmaker[AsyncSession], plans: Sequence[_Plan], *, mode: str, now: datetime
) -> _BatchResult:
    """One short transaction: lock the planned subscriptions, keep the plans whose subscriptions are exactly as
    they were read (same mode, same last_digest_at), enqueue their digests and advance them."""
    result = _BatchResult()
    async with session_factory() as session, session.begin():
        current = await _lock_current(session, [sub_id for plan in plans for sub_id in plan.seen])
        kept = [
            plan for plan in plans
            if all(current.get(sub_id) == (mode, last) for sub_id, last in plan.seen.items())
        ]
        result.raced = len(plans) - len(kept)
        messages = [plan.message for plan in kept if plan.message is not None]
        if messages:
            await enqueue(session, messages, now=now)
            await session.execute(
                dialect_insert(session, MessageRef)
                .values([{"message_id": m.message_id, "post_id": None, "user_id": m.user_id,
                          "kind": DIGEST_REF_KIND} for m in messages])
                .on_conflict_do_nothing(index_elements=["message_id"])
            )
        advance: dict[datetime, list[int]] = defaultdict(list)
        for plan in kept:
            for sub_id, value in plan.advance.items():
                advance[value].append(sub_id)
        for value, ids in advance.items():
            await session.execute(
                update(CategorySubscription).where(CategorySubscription.id.in_(ids)).values(last_digest_at=value)
                .execution_options(synchronize_session=False)
            )
            result.advanced += len(ids)
    result.users = len(kept)
    result.digests = len(messages)
    result.nothing_new = len(kept) - len(messages)
    return result


async def run_digests(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    settings: Settings,
    renderer: Renderer,
    now: datetime,
    period: Period | str,
    batch_size: int = USER_BATCH,
    not_after: datetime | None = None,
    dry_run: bool = False,
) -> DigestStats:
    """One pass: every user due for a `period` digest at `now` gets it enqueued (or, with nothing new, is
    advanced without one). Each batch of users is one transaction. Safe to run at any time, in any number of
    processes at once: the database decides who is due. `not_after` (the real time, for a pass run by hand for
    another `now`) caps the windows and the send time, so a future `now` cannot hide posts made meanwhile.
    `dry_run` plans the same digests and returns them as `previews`: nothing is queued, no clock moves."""
    started = clock.perf_counter()
    which = Period(period)
    schedule = DigestSchedule.from_settings(settings.digest)
    async with session_factory() as session:
        user_ids = await due_user_ids(session, period=which, schedule=schedule, now=now)
    totals = _BatchResult()
    previews: list[DigestPreview] = []
    cache = _PassCache()
    batches = 0
    mode = SubscriptionMode(which.value).value
    send_at = now if not_after is None else min(now, not_after)  # what is queued goes out now, not at `now`
    for first in range(0, len(user_ids), max(1, batch_size)):
        chunk = user_ids[first : first + max(1, batch_size)]
        plans = await _plan_batch(session_factory, chunk, period=which, schedule=schedule, settings=settings,
                                  renderer=renderer, now=now, not_after=not_after, render=not dry_run,
                                  cache=cache)
        if not plans:
            continue
        if dry_run:
            found = [plan.preview for plan in plans if plan.preview is not None]
            previews.extend(found)
            totals.users += len(plans)
            totals.digests += len(found)
            totals.nothing_new += len(plans) - len(found)
            continue
        batch = await _commit_batch(session_factory, plans, mode=mode, now=send_at)
        batches += 1
        totals.digests += batch.digests
        totals.nothing_new += batch.nothing_new
        totals.advanced += batch.advanced
        totals.users += batch.users
        totals.raced += batch.raced
    stats = DigestStats(period=which.value, users_due=totals.users, digests=totals.digests,
                        nothing_new=totals.nothing_new, subscriptions_advanced=totals.advanced,
                        raced=totals.raced, batches=batches,
                        seconds=clock.perf_counter() - started, dry_run=dry_run, previews=tuple(previews))
    if not dry_run:
        try:
            await _record_run(session_factory, which, at=send_at, digests=totals.digests)
        except Exception:  # the digests are committed; only the figure for /metrics is lost
            log.exception("digest.record_failed period=%s", which.value)
    log.info("digest.run period=%s now=%s users_due=%d digests=%d nothing_new=%d dry_run=%s ms=%d", which.value,
             now.isoformat(), stats.users_due, stats.digests, stats.nothing_new, dry_run, stats.seconds * 1000)
    return stats


async def _record_run(
    session_factory: async_sessionmaker[AsyncSession], period: Period, *, at: datetime, digests: int
) -> None:
    """The period's digest_runs row: this pass's time and count, added to the total (what /metrics reads)."""
    async with session_factory() as session, session.begin():
        stmt = dialect_insert(session, DigestRun).values(period=period.value, last_run_at=at, last_digests=digests,
                                                         digests_total=digests)
        await session.execute(stmt.on_conflict_do_update(
            index_elements=["period"],
            set_={"last_run_at": stmt.excluded.last_run_at, "last_digests": stmt.excluded.last_digests,
                  "digests_total": DigestRun.digests_total + stmt.excluded.digests_total},
        ))

