"""Digest schedule maths (pure): periods, the [digest] time settings, and the window a run covers.

A user's period ends at [digest] daily_at (weekly: on weekly_day at daily_at) in their own timezone
(``users.timezone``, else [digest] timezone). The window of a run is (last_digest_at, the latest period boundary
<= now], computed with zoneinfo on the local calendar, so DST days are 23 or 25 hours long and the boundary
stays at the same wall-clock time. A daily_at that falls in a DST gap maps to the instant just after the gap;
in a repeated hour, to its first occurrence.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from qaflow_mail.config import DigestSettings

log = logging.getLogger(__name__)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


class Period(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"


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
