"""The gateway's figures, read from the database, and their Prometheus text form (``/metrics``, ``qaflow-mail stats``).

Every figure is read from the shared database when asked, so any node answers for the whole installation and
two nodes never disagree; all are gauges. The text exposition format (version 0.0.4) is written here directly:
gauges with labels need a dozen lines, where prometheus-client would bring a process-local registry built for
counters this design does not keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import (
    BounceRecord,
    Category,
    Disposition,
    InboundMessage,
    Outbox,
    OutboxStatus,
    Post,
    PostStatus,
    Topic,
    User,
    UserStatus,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "qaflow_mail"


@dataclass(frozen=True, slots=True)
class Snapshot:
    inbound_by_disposition: Mapping[str, int]
    outbox_by_status: Mapping[str, int]
    outbox_by_kind_pending: Mapping[str, int]
    oldest_pending_outbox_seconds: float  # 0 when nothing waits
    posts_by_status: Mapping[str, int]
    users_by_status: Mapping[str, int]
    topics: int
    categories: int
    bounces: int
    bouncing_users: int

    @property
    def shunted(self) -> int:
        return self.inbound_by_disposition.get(Disposition.SHUNTED.value, 0)

    def as_dict(self) -> dict[str, object]:
        return {
            "inbound_by_disposition": dict(self.inbound_by_disposition),
            "outbox_by_status": dict(self.outbox_by_status),
            "outbox_pending_by_kind": dict(self.outbox_by_kind_pending),
            "oldest_pending_outbox_seconds": self.oldest_pending_outbox_seconds,
            "shunted": self.shunted,
            "posts_by_status": dict(self.posts_by_status),
            "users_by_status": dict(self.users_by_status),
            "topics": self.topics,
            "categories": self.categories,
            "bounces": self.bounces,
            "bouncing_users": self.bouncing_users,
        }


async def _grouped(session: AsyncSession, column: object, every: Iterable[str]) -> dict[str, int]:
    """Counts by `column`'s value, with 0 for each expected value that has no rows (a series never vanishes)."""
    counts = dict.fromkeys(every, 0)
    for value, count in await session.execute(select(column, func.count()).group_by(column)):  # type: ignore[call-overload]
        counts[str(value)] = int(count)
    return counts


async def _count(session: AsyncSession, model: type) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def snapshot(session: AsyncSession, *, now: datetime) -> Snapshot:
    """The figures as they stand in the database at ``now``."""
    pending = (OutboxStatus.PENDING.value, OutboxStatus.SENDING.value)
    oldest = await session.scalar(select(func.min(Outbox.created_at)).where(Outbox.status.in_(pending)))
    by_kind = {
        str(kind): int(count)
        for kind, count in await session.execute(
            select(Outbox.kind, func.count()).where(Outbox.status.in_(pending)).group_by(Outbox.kind))
    }
    bouncing = await session.scalar(
        select(func.count()).select_from(User).where(User.status == UserStatus.BOUNCING.value))
    return Snapshot(
        inbound_by_disposition=await _grouped(session, InboundMessage.disposition, (d.value for d in Disposition)),
        outbox_by_status=await _grouped(session, Outbox.status, (s.value for s in OutboxStatus)),
        outbox_by_kind_pending=by_kind,
        oldest_pending_outbox_seconds=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
        posts_by_status=await _grouped(session, Post.status, (s.value for s in PostStatus)),
        users_by_status=await _grouped(session, User.status, (s.value for s in UserStatus)),
        topics=await _count(session, Topic),
        categories=await _count(session, Category),
        bounces=await _count(session, BounceRecord),
        bouncing_users=int(bouncing or 0),
    )


async def database_ok(session: AsyncSession) -> None:
    """Raises when the database cannot answer a trivial query (``/healthz``)."""
    await session.execute(text("SELECT 1"))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, help_text: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> list[str]:
    lines = [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} gauge"]
    for labels, value in samples:
        rendered = ",".join(f'{key}="{_label(val)}"' for key, val in sorted(labels.items()))
        number = repr(float(value)) if not float(value).is_integer() else str(int(value))
        lines.append(f"{PREFIX}_{name}{{{rendered}}} {number}" if rendered else f"{PREFIX}_{name} {number}")
    return lines


def prometheus_text(snap: Snapshot) -> str:
    """``snap`` in the Prometheus text exposition format."""
    lines = [
        *_family("inbound_messages", "Inbound messages recorded, by disposition.",
                 (({"disposition": k}, v) for k, v in sorted(snap.inbound_by_disposition.items()))),
        *_family("outbox_messages", "Outbox rows, by status (sent and failed rows are pruned after [retention]).",
                 (({"status": k}, v) for k, v in sorted(snap.outbox_by_status.items()))),
        *_family("outbox_pending_messages", "Outbox rows waiting to be sent, by kind.",
                 (({"kind": k}, v) for k, v in sorted(snap.outbox_by_kind_pending.items()))),
        *_family("outbox_oldest_pending_age_seconds", "Age of the oldest outbox row still waiting (0 when none).",
                 [({}, snap.oldest_pending_outbox_seconds)]),
        *_family("shunted_messages", "Inbound messages set aside after failing every attempt (qaflow-mail shunt).",
                 [({}, snap.shunted)]),
        *_family("posts", "Posts, by status.", (({"status": k}, v) for k, v in sorted(snap.posts_by_status.items()))),
        *_family("users", "Users, by status.", (({"status": k}, v) for k, v in sorted(snap.users_by_status.items()))),
        *_family("topics", "Topics.", [({}, snap.topics)]),
        *_family("categories", "Categories.", [({}, snap.categories)]),
        *_family("bounces", "Delivery failures recorded.", [({}, snap.bounces)]),
        *_family("bouncing_users", "Users whose mail stopped after too many bounces.", [({}, snap.bouncing_users)]),
    ]
    return "\n".join(lines) + "\n"
