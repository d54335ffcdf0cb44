"""Typed SQLAlchemy 2.0 models. Portable across SQLite and PostgreSQL: no dialect-only types or SQL."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserStatus(StrEnum):
    ACTIVE = "active"
    STAGED = "staged"  # created from an unknown sender where strangers may post
    DISABLED = "disabled"
    BOUNCING = "bouncing"


class SubscriptionMode(StrEnum):
    EACH = "each"
    DAILY = "daily"
    WEEKLY = "weekly"
    MUTE = "mute"


class Disposition(StrEnum):
    ACCEPTED = "accepted"
    DISCARDED = "discarded"
    REJECTED = "rejected"
    HELD = "held"
    SHUNTED = "shunted"  # failed the pipeline every time: kept for the admins (qaflow-mail shunt)
    RETRIED = "retried"  # a shunted message an admin sent through again (its new record says how it went)


class PostStatus(StrEnum):
    PUBLISHED = "published"
    HELD = "held"  # waits for a moderator: never mailed, listed, searched or shown
    REJECTED = "rejected"  # a moderator said no: kept on record, never shown


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class OutboxKind(StrEnum):
    NOTIFICATION = "notification"
    DIGEST = "digest"
    ANNOUNCEMENT = "announcement"
    CONFIRMATION = "confirmation"
    NOTICE = "notice"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=UserStatus.ACTIVE)
    bounce_score: Mapped[float] = mapped_column(Float, default=0.0)
    timezone: Mapped[str | None] = mapped_column(String(64))
    announcements_muted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Which replies reach this user by mail besides their "each" subscriptions (NotifyReplies).
    notify_replies: Mapped[str] = mapped_column(String(16), default="direct", server_default="direct")
    # Signed into every unsubscribe token; raising it (a new join, rotate-tokens) voids all earlier links.
    token_generation: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class NotifyReplies(StrEnum):
    ALL = "all"  # replies anywhere in topics I started or posted in
    DIRECT = "direct"  # replies to my posts, and anything in topics I started
    OFF = "off"


class UserAddress(Base):
    """Further addresses a user posts from; the primary address is users.email."""

    __tablename__ = "user_addresses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)


class Source(StrEnum):
    """How a message reached us. An archive import replays old mail, where unknown authors are welcome."""

    SMTP = "smtp"
    LMTP = "lmtp"
    IMAP = "imap"
    IMPORT = "import"
    CLI = "cli"

# Topics there are made only by publishing an announcement (announce@ or `announce send`), never by a post.
ANNOUNCEMENTS_SLUG = "announcements"


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    allow_strangers: Mapped[bool] = mapped_column(Boolean, default=False)
    # Mail only: not listed on the web, its topics, attachments, feeds and search results answer 404.
    private: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Every post waits for a moderator.
    moderated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What a join that names no mode gives here (each|daily|weekly); NULL = [subscriptions] default_mode.
    default_mode: Mapped[str | None] = mapped_column(String(16))


class Topic(Base):
    __tablename__ = "topics"
    __table_args__ = (
        Index("ix_topics_category_last_post", "category_id", "last_post_at"),
        Index("ix_topics_last_post", "last_post_at"),  # the web's latest topics, all categories
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    subject: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_post_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Web page views, added in batches (server/web/views.py), never one UPDATE per request.
    views: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Post(Base):
    __tablename__ = "posts"
    __table_args__ = (
        # Few rows: the web's category list counts them to know when its topic counts changed (migration 0009).
        Index("ix_posts_unpublished", "topic_id", sqlite_where=text("status <> 'published'"),
              postgresql_where=text("status <> 'published'")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)  # the web's author cards count
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("posts.id"))
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    in_reply_to: Mapped[str | None] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="smtp")
    status: Mapped[str] = mapped_column(String(16), default=PostStatus.PUBLISHED,
                                        server_default=PostStatus.PUBLISHED.value)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class PendingReference(Base):
    """Ids an orphan post referenced but that were unknown when it arrived; re-attached when one arrives."""

    __tablename__ = "pending_references"
    __table_args__ = (UniqueConstraint("post_id", "message_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(255), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class MessageRef(Base):
    """A Message-ID we sent (notification, digest entry) mapped back to its post, so replies thread."""

    __tablename__ = "message_refs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    post_id: Mapped[int | None] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32), default="notification")


class InboundMessage(Base):
    __tablename__ = "inbound_messages"
    __table_args__ = (
        # The per-sender rate limit counts a sender's recent messages.
        Index("ix_inbound_messages_sender_received", "from_address", "received_at"),
        # A message is taken once: two deliveries racing each other cannot both be accepted (or held); the loser's
        # transaction fails and is retried, and then it is a duplicate. Refusals may repeat (a retry may succeed).
        Index(
            "uq_inbound_messages_taken", "message_id", unique=True,
            sqlite_where=text("disposition IN ('accepted', 'held')"),
            postgresql_where=text("disposition IN ('accepted', 'held')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(255), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    envelope_from: Mapped[str] = mapped_column(String(320), default="")
    recipients: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")
    source: Mapped[str] = mapped_column(String(16), default="smtp")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    disposition: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    post_id: Mapped[int | None] = mapped_column(ForeignKey("posts.id", ondelete="SET NULL"))
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class InboundFailure(Base):
    """A message the pipeline failed on, by its bytes: how often, and the last error. Shunted after
    [limits] shunt_after_failures attempts; removed when the message goes through."""

    __tablename__ = "inbound_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    message_id: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    content_id: Mapped[str | None] = mapped_column(String(255))
    inline: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class CategorySubscription(Base):
    __tablename__ = "category_subscriptions"
    __table_args__ = (UniqueConstraint("user_id", "category_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id", ondelete="CASCADE"), index=True)
    mode: Mapped[str] = mapped_column(String(16), default=SubscriptionMode.EACH)
    last_digest_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Announcement(Base):
    __tablename__ = "announcements"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id", ondelete="SET NULL"))
    post_id: Mapped[int | None] = mapped_column(ForeignKey("posts.id", ondelete="SET NULL"))
    subject: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(24))
    verified_by: Mapped[str] = mapped_column(String(32), default="")
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxBody(Base):
    """A message shared by many outbox rows (a digest's), stored once as a template (outbound.stored_bodies)."""

    __tablename__ = "outbox_bodies"
    # Never reuse an id (on SQLite a deleted highest id would be): a sender keeps bodies it has read by id.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Outbox(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_next_attempt", "status", "next_attempt_at"),
        # Notice rate limits count what went to one address lately.
        Index("ix_outbox_recipient_created", "recipient", "created_at"),
        # A bounce finds the row it answers by user and post.
        Index("ix_outbox_user_post", "user_id", "post_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    message_id: Mapped[str] = mapped_column(String(255), index=True)
    envelope_from: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    post_id: Mapped[int | None] = mapped_column(ForeignKey("posts.id", ondelete="SET NULL"))
    announcement_id: Mapped[int | None] = mapped_column(
        ForeignKey("announcements.id", ondelete="SET NULL"), index=True
    )
    # The message; with body_id, only this recipient's values (JSON) to fill into that shared body.
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    body_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_bodies.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BounceRecord(Base):
    """A delivery failure reported for one of our messages (a 5xx from our relay, or a DSN to our VERP address)."""

    __tablename__ = "bounces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(8))
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConfirmationKind(StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    MODE = "mode"  # a -request@ "mode" from a sender our MTA did not authenticate; confirmation_requests.mode
    NOTIFY = "notify"  # likewise "notify"; confirmation_requests.mode holds the choice (all|direct|off)


class ConfirmationRequest(Base):
    """A join or leave asked for by mail (or a mode or notify change from an unauthenticated sender), waiting for
    the address itself to confirm (double opt-in).

    category_id None means the site's announcements. ``mode`` is the subscription mode asked for (join, mode) or
    the notify choice (notify). At most one is sent per address, category, kind and day.
    """

    __tablename__ = "confirmation_requests"
    __table_args__ = (Index("ix_confirmation_requests_email_created", "email", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(16), default=SubscriptionMode.EACH)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CategoryModerator(Base):
    """A user who decides on held posts of one category (admins decide on all of them)."""

    __tablename__ = "category_moderators"
    __table_args__ = (UniqueConstraint("category_id", "user_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


class ModerationDecision(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class HeldPost(Base):
    """Why a post (status held) waits for a moderator, and what was decided."""

    __tablename__ = "held_posts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"), unique=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    held_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decision: Mapped[str] = mapped_column(String(16), default=ModerationDecision.PENDING, index=True)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rejection_reason: Mapped[str] = mapped_column(Text, default="")


class Installation(Base):
    """One row: what this installation (this database) is, beyond its data. ``message_id_salt`` goes into every
    Message-ID we mint, so a recreated database never repeats an earlier one's ids."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # always 1
    message_id_salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FanoutKind(StrEnum):
    POST = "post"  # a post's notifications (target: the post id)
    ANNOUNCEMENT = "announcement"  # an announcement's broadcast (target: the announcement id)


class FanoutJob(Base):
    """One mail to many people, expanded into outbox rows later, in batches, by a fan-out worker.

    ``cursor`` is the last user id done: a crash between batches resumes after it. A worker holds the job while
    ``claimed_until`` lies ahead (services.fanout_jobs).
    """

    __tablename__ = "fanout_jobs"
    __table_args__ = (
        UniqueConstraint("kind", "target_id"),
        Index("ix_fanout_jobs_finished_claimed", "finished_at", "claimed_until"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[int] = mapped_column(BigInteger)
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    handed: Mapped[int] = mapped_column(Integer, default=0)  # outbox messages written so far
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far: a job that keeps crashing stops
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DigestRun(Base):
    """One row per digest period: when a pass last ran (on any node) and how many digests all passes queued.

    ``digests_total`` only grows (outbox rows are pruned, this is not), so ``/metrics`` serves it as a counter
    that every node reads alike."""

    __tablename__ = "digest_runs"

    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_digests: Mapped[int] = mapped_column(Integer, default=0)
    digests_total: Mapped[int] = mapped_column(BigInteger, default=0)
