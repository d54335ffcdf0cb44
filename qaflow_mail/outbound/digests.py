"""Daily and weekly digests: one email per user and period with what is new in the categories they follow.

Periods. A user's period ends at [digest] daily_at (weekly: on weekly_day at daily_at) in their own timezone
(``users.timezone``, else [digest] timezone). The window of a run is (last_digest_at, the latest period boundary
<= now], computed with zoneinfo on the local calendar, so DST days are 23 or 25 hours long and the boundary
stays at the same wall-clock time. A daily_at that falls in a DST gap maps to the instant just after the gap;
in a repeated hour, to its first occurrence.

Exactly once. Users are taken in batches. For a batch, what is due and new is read without locks, and each
digest is built, rendered and composed (the slow part, yielding to the event loop between users). Then one
short transaction locks those subscription rows (FOR UPDATE on PostgreSQL; on SQLite a no-op UPDATE first takes
the single write lock), keeps only the users whose subscriptions are still exactly as read, enqueues their
digests with dedupe key ``digest:<user_id>:<period>:<window end ISO>`` and moves ``last_digest_at`` to the window
end. A re-run, a second process or a restart finds nothing due, or finds it changed and leaves it; a crash
before the commit leaves everything as it was for the next run. The scheduler only decides *when* to look.

Catch-up. After downtime, the next run sends ONE digest per user covering everything since their last digest
(not one per missed period): the window simply starts at last_digest_at.

Nothing new, no digest: the subscriptions still move to the window end, so the next digest never repeats old
posts. A new subscription (last_digest_at NULL) starts at the later of its creation and the previous boundary.

Grouping. One digest per user and period across every category they follow in that mode, as Discourse sends
one summary. Announcements published in the window come first for users who have not muted them; on their
own they do not cause a digest (everyone got them by broadcast already), unless the user follows the
announcements category itself in this mode. The user's own posts are left out.

Unsubscribing. A digest covers several categories. Its List-Unsubscribe (the mail client's one button) carries
a DIGEST token that stops the whole digest: every subscription of the user in that mode is muted. The footer
gives one link per category, each turning only that category off.

Replies. Each topic carries its own ``reply+<token>`` address, bound to the latest post of that topic the
digest shows (the opening post for a topic without new replies) and to the recipient, so a reply threads under
what the reader just read. The digest itself has a Message-ID we mint, recorded in ``message_refs`` (kind
"digest", no post); ``find_digest_reference`` recognises a reply to the digest as a whole, which gets
``DIGEST_REPLY`` and the notice ``notice/digest_reply``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time as clock
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, and_, false, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.config import DigestSettings, Settings
from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import (
    ANNOUNCEMENTS_SLUG,
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
from qaflow_mail.errors import SmtpReply
from qaflow_mail.mail.addresses import FROM_LOCAL_PART
from qaflow_mail.mail.compose import ListHeaders, compose, list_id_value, make_message_id, to_bytes
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.outbound.notify import author_name, reply_address, topic_url
from qaflow_mail.outbound.queue import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import Rendered, Renderer
from qaflow_mail.outbound.site_notice import user_bounce_address
from qaflow_mail.subscriptions import DIGEST_MODE_CODES, unsubscribe_address, unsubscribe_url

log = logging.getLogger(__name__)

DAILY_TEMPLATE = "digest/daily"
WEEKLY_TEMPLATE = "digest/weekly"
DIGEST_REPLY_TEMPLATE = "notice/digest_reply"
MESSAGE_REF_KIND = "digest"

USER_BATCH = 100  # users per transaction: bounds the time the write lock is held on SQLite
EXCERPT_LINES = 4
EXCERPT_CHARS = 320
BODY_PREFIX_CHARS = 2000  # only this much of each post body is loaded: excerpts need no more
MAX_REPLIES_SHOWN = 5

DIGEST_REPLY = SmtpReply(
    550,
    "5.7.1",
    "This is a reply to a whole digest, which covers many topics; reply to the address given under the topic "
    "you mean (each topic has its own), or answer on the forum",
)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


class Period(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


# ----------------------------------------------------------------------------------------------------------------
# Period boundaries (pure)


@dataclass(frozen=True, slots=True)
class DigestSchedule:
    at: time
    weekday: int  # Monday = 0
    default_timezone: ZoneInfo

    @classmethod
    def from_settings(cls, digest: DigestSettings) -> DigestSchedule:
        return cls(at=parse_daily_at(digest.daily_at), weekday=parse_weekday(digest.weekly_day),
                   default_timezone=parse_timezone(digest.timezone, what="[digest] timezone"))

    def timezone_for(self, name: str | None) -> ZoneInfo:
        """A user's zone; an unknown or empty name falls back to the site default."""
        if not name:
            return self.default_timezone
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("digest.bad_timezone timezone=%r: using %s", name, self.default_timezone.key)
            return self.default_timezone


def parse_daily_at(value: str) -> time:
    match = _TIME_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"[digest] daily_at must be HH:MM (24-hour), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def parse_weekday(value: str) -> int:
    key = value.strip().lower()[:3]
    if key not in WEEKDAYS:
        raise ValueError(f"[digest] weekly_day must be one of {', '.join(WEEKDAYS)}, got {value!r}")
    return WEEKDAYS.index(key)


def parse_timezone(name: str, *, what: str = "timezone") -> ZoneInfo:
    """A zoneinfo zone by IANA name (Europe/Berlin); ValueError with a clear message otherwise."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{what}: unknown time zone {name!r} (use an IANA name such as Europe/Berlin)") from None


def _boundary(day: date, at: time, tz: ZoneInfo) -> datetime:
    # fold=0: a wall time in a DST gap maps to the instant after the gap, a repeated one to its first occurrence.
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def window_end(now: datetime, period: Period, schedule: DigestSchedule, tz: ZoneInfo) -> datetime:
    """The latest period boundary at or before `now`, in UTC: daily_at on the local calendar (weekly: on
    weekly_day). Aware datetimes are compared in UTC, never as wall times."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    day = now.astimezone(tz).date()
    step = timedelta(days=1)
    if period is Period.WEEKLY:
        day -= timedelta(days=(day.weekday() - schedule.weekday) % 7)
        step = timedelta(days=7)
    boundary = _boundary(day, schedule.at, tz)
    while boundary > now:
        day -= step
        boundary = _boundary(day, schedule.at, tz)
    return boundary


def previous_boundary(end: datetime, period: Period, schedule: DigestSchedule, tz: ZoneInfo) -> datetime:
    """The boundary before `end` (itself a boundary): one local day or week earlier, however many hours."""
    return window_end(end - timedelta(microseconds=1), period, schedule, tz)


# ----------------------------------------------------------------------------------------------------------------
# What a digest shows (pure)


@dataclass(frozen=True, slots=True)
class PostRow:
    """One post in a window, as loaded: only a prefix of the body."""

    id: int
    topic_id: int
    author_id: int
    author_name: str
    created_at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class TopicRow:
    id: int
    category_id: int
    category_name: str
    subject: str
    author_id: int
    author_name: str
    created_at: datetime
    opening_post_id: int
    is_announcement: bool


@dataclass(frozen=True, slots=True)
class DigestRecipient:
    user_id: int
    email: str
    name: str
    timezone: ZoneInfo
    show_announcements: bool


@dataclass(frozen=True, slots=True)
class SubscriptionWindow:
    category_id: int
    category_slug: str
    category_name: str
    start: datetime  # exclusive
    end: datetime  # inclusive


@dataclass(frozen=True, slots=True)
class DigestReply:
    author: str
    excerpt: str
    created: str


@dataclass(frozen=True, slots=True)
class DigestTopic:
    id: int
    title: str
    category: str
    author: str
    created: str
    excerpt: str  # the opening post's first lines ("" for an older topic shown for its replies)
    url: str
    reply_address: str
    replies: tuple[DigestReply, ...] = ()
    more_replies: int = 0

    @property
    def reply_count(self) -> int:
        return len(self.replies) + self.more_replies


@dataclass(frozen=True, slots=True)
class DigestUnsubscribe:
    category: str
    url: str
    mailto: str


@dataclass(frozen=True, slots=True)
class DigestContext:
    period: Period
    user_id: int
    email: str
    name: str
    timezone: str
    window_start: datetime
    window_end: datetime
    announcements: tuple[DigestTopic, ...]
    new_topics: tuple[DigestTopic, ...]
    active_topics: tuple[DigestTopic, ...]  # older topics with new replies
    omitted_topics: int
    categories: tuple[str, ...]
    unsubscribe: tuple[DigestUnsubscribe, ...]  # one per category; the first one goes into List-Unsubscribe
    site_name: str
    base_url: str

    @property
    def is_empty(self) -> bool:
        """Nothing new from the followed categories (announcements alone reached everyone by broadcast)."""
        return not self.new_topics and not self.active_topics

    @property
    def reply_total(self) -> int:
        return sum(t.reply_count for t in (*self.new_topics, *self.active_topics))

    def template_values(self) -> dict[str, Any]:
        tz = ZoneInfo(self.timezone)
        return {
            "site": {"name": self.site_name, "base_url": self.base_url},
            "digest": self,
            "period": self.period.value,
            "recipient": {"name": self.name, "email": self.email},
            "since": _local(self.window_start, tz),
            "until": _local(self.window_end, tz),
            "new_topic_count": len(self.new_topics),
            "reply_count": self.reply_total,
            "unsubscribe_url": self.unsubscribe[0].url,
            "unsubscribe_mailto": self.unsubscribe[0].mailto,
        }


def excerpt(text: str, *, lines: int = EXCERPT_LINES, chars: int = EXCERPT_CHARS) -> str:
    """The first few non-blank lines of a post, at most `chars` characters, cut at a word with an ellipsis."""
    kept = [" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n") if line.strip()][:lines]
    joined = "\n".join(kept)
    more = len(kept) == lines and len([ln for ln in text.split("\n") if ln.strip()]) > lines
    if len(joined) > chars:
        joined = joined[:chars].rsplit(" ", 1)[0].rstrip() or joined[:chars]
        more = True
    return joined + (" …" if more else "")


def _local(moment: datetime, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return f"{local:%a} {local.day} {local:%b %Y}, {local:%H:%M}"


def build_digest(
    *,
    period: Period,
    recipient: DigestRecipient,
    windows: Sequence[SubscriptionWindow],
    topics: Mapping[int, TopicRow],
    posts: Sequence[PostRow],
    settings: Settings,
    issued: date,
) -> DigestContext:
    """The digest of one user and period from the posts loaded for a batch (posts outside the user's windows
    and categories are ignored here). Pure: tokens are signed with `issued` as their issue day."""
    tz = recipient.timezone
    window_of = {w.category_id: w for w in windows}
    earliest = min(w.start for w in windows)
    latest = max(w.end for w in windows)
    by_topic: dict[int, list[PostRow]] = defaultdict(list)
    announcement_openings: list[tuple[TopicRow, PostRow]] = []
    for post in posts:
        topic = topics.get(post.topic_id)
        if topic is None or post.author_id == recipient.user_id:
            continue
        window = window_of.get(topic.category_id)
        if topic.is_announcement and post.id == topic.opening_post_id:
            if (recipient.show_announcements or window is not None) and earliest < post.created_at <= latest:
                announcement_openings.append((topic, post))
            continue
        if window is not None and window.start < post.created_at <= window.end:
            by_topic[post.topic_id].append(post)

    secret = settings.tokens.secret

    def reply_to(post_id: int) -> str:
        return reply_address(settings, sign(TokenKind.REPLY, (post_id, recipient.user_id), secret=secret,
                                            issued=issued))

    def url(topic_id: int) -> str:
        return topic_url(settings, topic_id)

    announcements = tuple(
        DigestTopic(id=t.id, title=t.subject, category=t.category_name, author=t.author_name,
                    created=_local(p.created_at, tz), excerpt=excerpt(p.text), url=url(t.id),
                    reply_address=reply_to(p.id))
        for t, p in sorted(announcement_openings, key=lambda tp: (tp[1].created_at, tp[1].id))
    )
    # Choose the topics first (newest topics, then older topics by their latest reply, at most max_topics in all),
    # and only then build their entries: a busy window must not cost a token and an excerpt per topic left out.
    new_keys: list[tuple[datetime, int]] = []
    active_keys: list[tuple[datetime, int]] = []
    for topic_id, items in by_topic.items():
        items.sort(key=lambda p: (p.created_at, p.id))
        opens_here = any(p.id == topics[topic_id].opening_post_id for p in items)
        (new_keys if opens_here else active_keys).append((items[-1].created_at, topic_id))
    room = max(0, settings.digest.max_topics - len(announcements))
    kept_new_ids = [tid for _, tid in sorted(new_keys, reverse=True)[:room]]
    kept_active_ids = [tid for _, tid in sorted(active_keys, reverse=True)[: max(0, room - len(kept_new_ids))]]
    omitted = len(new_keys) + len(active_keys) - len(kept_new_ids) - len(kept_active_ids)

    def entry(topic_id: int) -> DigestTopic:
        topic, items = topics[topic_id], by_topic[topic_id]
        opening = next((p for p in items if p.id == topic.opening_post_id), None)
        replies = [p for p in items if p.id != topic.opening_post_id]
        shown = replies[-MAX_REPLIES_SHOWN:]
        return DigestTopic(
            id=topic.id, title=topic.subject, category=topic.category_name, author=topic.author_name,
            created=_local(topic.created_at, tz), excerpt=excerpt(opening.text) if opening else "",
            url=url(topic.id), reply_address=reply_to(items[-1].id),
            replies=tuple(DigestReply(author=p.author_name, excerpt=excerpt(p.text, lines=3, chars=240),
                                      created=_local(p.created_at, tz)) for p in shown),
            more_replies=len(replies) - len(shown),
        )

    kept_new = [entry(tid) for tid in kept_new_ids]
    kept_active = [entry(tid) for tid in kept_active_ids]

    ordered = sorted(windows, key=lambda w: w.category_slug)
    unsubscribe = tuple(
        DigestUnsubscribe(category=w.category_name, url=unsubscribe_url(settings, token),
                          mailto=unsubscribe_address(settings, token))
        for w in ordered
        for token in (sign(TokenKind.UNSUBSCRIBE, (recipient.user_id, w.category_id), secret=secret,
                           issued=issued),)
    )
    return DigestContext(
        period=period, user_id=recipient.user_id, email=recipient.email, name=recipient.name,
        timezone=tz.key, window_start=earliest, window_end=latest, announcements=announcements,
        new_topics=tuple(kept_new), active_topics=tuple(kept_active), omitted_topics=omitted,
        categories=tuple(w.category_name for w in ordered), unsubscribe=unsubscribe,
        site_name=settings.site.name, base_url=settings.site.base_url,
    )


# ----------------------------------------------------------------------------------------------------------------
# The message


def digest_message_id(user_id: int, period: Period, end: datetime, *, domain: str) -> str:
    """Stable for (user, period, window end): a re-run mints the same id, so message_refs stays one row."""
    return make_message_id(MESSAGE_REF_KIND, f"{user_id}.{period.value}.{end.astimezone(UTC):%Y%m%dT%H%M%SZ}",
                           domain=domain)


def dedupe_key(user_id: int, period: Period, end: datetime) -> str:
    return f"digest:{user_id}:{period.value}:{end.astimezone(UTC).isoformat()}"


def template_for(period: Period) -> str:
    return DAILY_TEMPLATE if period is Period.DAILY else WEEKLY_TEMPLATE


def digest_message(
    settings: Settings, digest: DigestContext, rendered: Rendered, *, now: datetime
) -> OutgoingMessage:
    domain = settings.site.domain
    message_id = digest_message_id(digest.user_id, digest.period, digest.window_end, domain=domain)
    stop_token = sign(TokenKind.DIGEST, (digest.user_id, DIGEST_MODE_CODES[SubscriptionMode(digest.period.value)]),
                      secret=settings.tokens.secret, issued=now.date())
    stop = DigestUnsubscribe(category=f"{digest.period.value} digest", url=unsubscribe_url(settings, stop_token),
                             mailto=unsubscribe_address(settings, stop_token))
    name = f"{settings.site.name} digest"
    message = compose(
        from_name=name,
        from_address=f"{FROM_LOCAL_PART}@{domain}",
        to=digest.email,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        in_reply_to=None,
        references=(),
        reply_to=None,
        list_headers=ListHeaders(
            list_id=list_id_value(f"{settings.site.name} {digest.period.value} digest",
                                  slug=f"{digest.period.value}-digest", domain=domain),
            post=None,
            archive=settings.site.base_url,
            unsubscribe_mailto=stop.mailto,
            # RFC 8058 one-click needs HTTPS; a plain-http base URL (local use) keeps only the mailto.
            unsubscribe_https=stop.url if stop.url.lower().startswith("https://") else None,
        ),
        date=now,
    )
    return OutgoingMessage(
        kind=OutboxKind.DIGEST,
        dedupe_key=dedupe_key(digest.user_id, digest.period, digest.window_end),
        message_id=message_id,
        envelope_from=user_bounce_address(settings, digest.user_id, now=now),
        recipient=digest.email,
        raw=to_bytes(message),
        user_id=digest.user_id,
    )


# ----------------------------------------------------------------------------------------------------------------
# Selecting and loading (batched)


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

    def as_dict(self) -> dict[str, Any]:
        return {"period": self.period, "users_due": self.users_due, "digests": self.digests,
                "nothing_new": self.nothing_new, "subscriptions_advanced": self.subscriptions_advanced,
                "raced": self.raced, "batches": self.batches, "seconds": round(self.seconds, 3)}


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


@dataclass(slots=True)
class _Plan:
    """One due user's digest, prepared without locks; committed only if their subscriptions did not move."""

    user_id: int
    seen: dict[int, datetime | None]  # subscription id -> last_digest_at when read
    advance: dict[int, datetime]  # subscription id -> its new last_digest_at
    message: OutgoingMessage | None  # None: nothing new (or no address we can mail)


async def _plan_batch(
    session_factory: async_sessionmaker[AsyncSession],
    user_ids: Sequence[int],
    *,
    period: Period,
    schedule: DigestSchedule,
    settings: Settings,
    renderer: Renderer,
    now: datetime,
) -> list[_Plan]:
    """Read what is due and new (a few queries, no locks), then build, render and compose each digest, yielding
    to the event loop between users: this is the CPU-heavy part, and it holds no lock."""
    mode = SubscriptionMode(period.value).value
    async with session_factory() as session:
        subscriptions = await _subscriptions(session, user_ids, mode)
        per_user: dict[int, tuple[User, ZoneInfo, datetime, list[tuple[CategorySubscription, datetime]]]] = {}
        for sub, user in subscriptions:
            tz = schedule.timezone_for(user.timezone)
            end = window_end(now, period, schedule, tz)
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
        posts, topics = await _load_posts(session, wanted, min(starts), max(ends))

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
                                    show_announcements=not user.announcements_muted)
        digest = build_digest(period=period, recipient=recipient, windows=windows, topics=topics, posts=posts,
                              settings=settings, issued=now.date())
        if digest.is_empty:
            continue
        rendered = renderer.render(template_for(period), digest.template_values())
        try:
            plan.message = digest_message(settings, digest, rendered, now=now)
        except ValueError as exc:  # an address compose cannot carry: no digest, but the user still advances
            log.warning("digest.skipped user_id=%s reason=%s", user.id, exc)
        await asyncio.sleep(0)
    return plans


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
                          "kind": MESSAGE_REF_KIND} for m in messages])
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
) -> DigestStats:
    """One pass: every user due for a `period` digest at `now` gets it enqueued (or, with nothing new, is
    advanced without one). Each batch of users is one transaction. Safe to run at any time, in any number of
    processes at once: the database decides who is due."""
    started = clock.perf_counter()
    which = Period(period)
    schedule = DigestSchedule.from_settings(settings.digest)
    async with session_factory() as session:
        user_ids = await due_user_ids(session, period=which, schedule=schedule, now=now)
    totals = _BatchResult()
    batches = 0
    mode = SubscriptionMode(which.value).value
    for first in range(0, len(user_ids), max(1, batch_size)):
        chunk = user_ids[first : first + max(1, batch_size)]
        plans = await _plan_batch(session_factory, chunk, period=which, schedule=schedule, settings=settings,
                                  renderer=renderer, now=now)
        if not plans:
            continue
        batch = await _commit_batch(session_factory, plans, mode=mode, now=now)
        batches += 1
        totals.digests += batch.digests
        totals.nothing_new += batch.nothing_new
        totals.advanced += batch.advanced
        totals.users += batch.users
        totals.raced += batch.raced
    stats = DigestStats(period=which.value, users_due=totals.users, digests=totals.digests,
                        nothing_new=totals.nothing_new, subscriptions_advanced=totals.advanced,
                        raced=totals.raced, batches=batches,
                        seconds=clock.perf_counter() - started)
    log.info("digest.run period=%s now=%s users_due=%d digests=%d nothing_new=%d ms=%d", which.value,
             now.isoformat(), stats.users_due, stats.digests, stats.nothing_new, stats.seconds * 1000)
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Unsubscribing from a digest, and replies to a digest as a whole


async def find_digest_reference(session: AsyncSession, message_ids: Iterable[str]) -> MessageRef | None:
    """The digest among `message_ids` (a reply's In-Reply-To and References), if it answers one of ours."""
    ids = [mid for mid in message_ids if mid]
    if not ids:
        return None
    ref: MessageRef | None = await session.scalar(
        select(MessageRef).where(MessageRef.message_id.in_(ids), MessageRef.kind == MESSAGE_REF_KIND).limit(1)
    )
    return ref


def render_digest_reply_notice(
    renderer: Renderer, settings: Settings, *, original_subject: str, quoted_lines: Sequence[str]
) -> Rendered:
    """The notice for someone who replied to a digest as a whole: how to reply to one topic instead."""
    return renderer.render(DIGEST_REPLY_TEMPLATE, {
        "site": {"name": settings.site.name, "base_url": settings.site.base_url},
        "original_subject": original_subject,
        "quoted_lines": list(quoted_lines)[:10],
    })
