"""The gateway's figures, read from the database, and their Prometheus text form (``/metrics``, ``qaflow-mail stats``).

Every figure is read from the shared database when asked, so any node answers for the whole installation and
two nodes never disagree. prometheus-client writes the text exposition format (version 0.0.4): its metric
families carry the escaping and the histogram rules (cumulative buckets, ``+Inf``, ``_sum``, ``_count``) that a
hand-written formatter would have to get right. Most figures are gauges: rows the database holds now (outbox
rows are pruned after [retention], so their counts may fall). ``qaflow_mail_digests_total`` is a true counter,
kept in digest_runs. Request latency is per process: ``server.latency``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float
from sqlalchemy import and_, case, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import (
    BounceRecord,
    Category,
    DigestRun,
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
# Upper bounds of the bounce score buckets; the default [limits] bounce_score_threshold is 5.
BOUNCE_SCORE_BUCKETS = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0)
DELIVERY_RESULTS = ("sent", "retried", "failed", "bounced_hard", "bounced_soft")


def _bucket_label(bound: float) -> str:
    """A bucket bound as Prometheus clients write ``le`` ("1.0", "+Inf")."""
    label: str = _untyped_go_float(bound)  # type: ignore[no-untyped-call]
    return label


@dataclass(frozen=True, slots=True)
class DigestRunFigures:
    last_run_at: datetime
    last_digests: int
    digests_total: int


@dataclass(frozen=True, slots=True)
class ScoreHistogram:
    """Users by bounce score: cumulative counts per upper bound (the last is +Inf), and the scores' sum."""

    buckets: tuple[tuple[float, int], ...] = ()
    total: float = 0.0

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


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
    deliveries: Mapping[str, int] = field(default_factory=dict)
    digest_runs: Mapping[str, DigestRunFigures] = field(default_factory=dict)
    bounce_scores: ScoreHistogram = ScoreHistogram()

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
            "deliveries": dict(self.deliveries),
            "digest_runs": {period: {"last_run_at": run.last_run_at.isoformat(), "last_digests": run.last_digests,
                                     "digests_total": run.digests_total}
                            for period, run in sorted(self.digest_runs.items())},
            "bounce_scores": {"buckets": {_bucket_label(le): n for le, n in self.bounce_scores.buckets},
                              "sum": self.bounce_scores.total},
        }


async def _grouped(session: AsyncSession, column: object, every: Iterable[str]) -> dict[str, int]:
    """Counts by `column`'s value, with 0 for each expected value that has no rows (a series never vanishes)."""
    counts = dict.fromkeys(every, 0)
    for value, count in await session.execute(select(column, func.count()).group_by(column)):  # type: ignore[call-overload]
        counts[str(value)] = int(count)
    return counts


async def _count(session: AsyncSession, model: type) -> int:
    return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _deliveries(session: AsyncSession) -> dict[str, int]:
    """Outbox rows sent, failed, and retried (a temporary failure was tried again, or waits to be), and bounce
    records by kind: the delivery results the database still holds."""
    sent, failed, pending = OutboxStatus.SENT.value, OutboxStatus.FAILED.value, OutboxStatus.PENDING.value
    retried = or_(and_(Outbox.status.in_((sent, failed)), Outbox.attempts > 1),
                  and_(Outbox.status == pending, Outbox.attempts > 0))
    sent_rows, retried_rows, failed_rows = (await session.execute(select(
        func.count().filter(Outbox.status == sent), func.count().filter(retried),
        func.count().filter(Outbox.status == failed),
    ))).one()
    bounces = await _grouped(session, BounceRecord.kind, ("hard", "soft"))
    return {"sent": int(sent_rows or 0), "retried": int(retried_rows or 0), "failed": int(failed_rows or 0),
            **{f"bounced_{kind}": n for kind, n in sorted(bounces.items())}}


async def _bounce_scores(session: AsyncSession) -> ScoreHistogram:
    """Every user's bounce score, as cumulative buckets: one query."""
    columns = [func.sum(case((User.bounce_score <= bound, 1), else_=0)) for bound in BOUNCE_SCORE_BUCKETS]
    row = (await session.execute(select(*columns, func.count(), func.coalesce(func.sum(User.bounce_score), 0.0)))).one()
    buckets = [(bound, int(row[i] or 0)) for i, bound in enumerate(BOUNCE_SCORE_BUCKETS)]
    buckets.append((float("inf"), int(row[len(BOUNCE_SCORE_BUCKETS)] or 0)))
    return ScoreHistogram(buckets=tuple(buckets), total=float(row[-1] or 0.0))


async def _digest_runs(session: AsyncSession) -> dict[str, DigestRunFigures]:
    return {run.period: DigestRunFigures(run.last_run_at, run.last_digests, run.digests_total)
            for run in await session.scalars(select(DigestRun))}


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
        deliveries=await _deliveries(session),
        digest_runs=await _digest_runs(session),
        bounce_scores=await _bounce_scores(session),
    )


async def database_ok(session: AsyncSession) -> None:
    """Raises when the database cannot answer a trivial query (``/healthz``)."""
    await session.execute(text("SELECT 1"))


def _gauge(name: str, help_text: str, label: str | None, values: Iterable[tuple[str, float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=[label] if label else None)
    for key, value in values:
        family.add_metric([key] if label else [], value)
    return family


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        yield _gauge("inbound_messages", "Inbound messages recorded, by disposition.", "disposition",
                     sorted(snap.inbound_by_disposition.items()))
        yield _gauge("outbox_messages", "Outbox rows, by status (sent and failed rows are pruned after [retention]).",
                     "status", sorted(snap.outbox_by_status.items()))
        yield _gauge("outbox_pending_messages", "Outbox rows waiting to be sent, by kind.", "kind",
                     sorted(snap.outbox_by_kind_pending.items()))
        yield _gauge("outbox_oldest_pending_age_seconds", "Age of the oldest outbox row still waiting (0 when none).",
                     None, [("", snap.oldest_pending_outbox_seconds)])
        yield _gauge("shunted_messages", "Inbound messages set aside after failing every attempt (qaflow-mail shunt).",
                     None, [("", snap.shunted)])
        yield _gauge("posts", "Posts, by status.", "status", sorted(snap.posts_by_status.items()))
        yield _gauge("users", "Users, by status.", "status", sorted(snap.users_by_status.items()))
        yield _gauge("topics", "Topics.", None, [("", snap.topics)])
        yield _gauge("categories", "Categories.", None, [("", snap.categories)])
        yield _gauge("bounces", "Delivery failures recorded.", None, [("", snap.bounces)])
        yield _gauge("bouncing_users", "Users whose mail stopped after too many bounces.", None,
                     [("", snap.bouncing_users)])
        yield _gauge("deliveries", "Delivery results on record: outbox rows sent, retried (a temporary failure tried "
                     "again) and failed, and bounces by kind (outbox rows are pruned after [retention]).", "result",
                     [(r, snap.deliveries.get(r, 0)) for r in DELIVERY_RESULTS])
        yield _gauge("digest_last_run_timestamp_seconds", "When a digest pass last ran on any node (Unix time).",
                     "period", [(p, run.last_run_at.timestamp()) for p, run in sorted(snap.digest_runs.items())])
        yield _gauge("digest_last_run_digests", "Digests the last pass queued.", "period",
                     [(p, run.last_digests) for p, run in sorted(snap.digest_runs.items())])
        digests = CounterMetricFamily(f"{PREFIX}_digests", "Digests queued by all passes.", labels=["period"])
        for period, run in sorted(snap.digest_runs.items()):
            digests.add_metric([period], run.digests_total)
        yield digests
        scores = snap.bounce_scores
        yield HistogramMetricFamily(
            f"{PREFIX}_user_bounce_score", "Users by bounce score (delivery stops at [limits] bounce_score_threshold).",
            buckets=[(_bucket_label(le), n) for le, n in scores.buckets] or [("+Inf", 0)],
            sum_value=scores.total,
        )


def prometheus_text(snap: Snapshot) -> str:
    """``snap`` in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry).decode()
