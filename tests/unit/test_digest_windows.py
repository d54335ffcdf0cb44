"""Digest period boundaries: the latest daily_at (weekly: weekly_day at daily_at) at or before now, on the user's
local calendar, across DST changes and odd UTC offsets."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from qaflow_mail.config import DigestSettings
from qaflow_mail.outbound.digest_schedule import (
    DigestSchedule,
    Period,
    parse_daily_at,
    parse_timezone,
    parse_weekday,
    previous_boundary,
    window_end,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
KATHMANDU = ZoneInfo("Asia/Kathmandu")  # +05:45
AUCKLAND = ZoneInfo("Pacific/Auckland")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def schedule(at: str = "07:00", day: str = "mon", tz: str = "UTC") -> DigestSchedule:
    return DigestSchedule.from_settings(DigestSettings(daily_at=at, weekly_day=day, timezone=tz))


DAILY = Period.DAILY
WEEKLY = Period.WEEKLY


def test_daily_in_utc() -> None:
    s = schedule()
    assert window_end(utc(2025, 6, 2, 7, 0), DAILY, s, ZoneInfo("UTC")) == utc(2025, 6, 2, 7, 0)  # inclusive
    assert window_end(utc(2025, 6, 2, 6, 59, 59), DAILY, s, ZoneInfo("UTC")) == utc(2025, 6, 1, 7, 0)
    assert window_end(utc(2025, 6, 2, 23, 0), DAILY, s, ZoneInfo("UTC")) == utc(2025, 6, 2, 7, 0)


def test_berlin_spring_forward_day_is_23_hours() -> None:
    # 2025-03-30: clocks go from 02:00 CET to 03:00 CEST. 07:00 CEST is 05:00 UTC; the day before, 07:00 CET is 06:00.
    s = schedule()
    end = window_end(utc(2025, 3, 30, 6, 30), DAILY, s, BERLIN)
    assert end == utc(2025, 3, 30, 5, 0)
    start = previous_boundary(end, DAILY, s, BERLIN)
    assert start == utc(2025, 3, 29, 6, 0)
    assert end - start == timedelta(hours=23)
    assert end.astimezone(BERLIN).time() == start.astimezone(BERLIN).time() == time(7, 0)


def test_berlin_fall_back_day_is_25_hours() -> None:
    # 2025-10-26: clocks go from 03:00 CEST back to 02:00 CET.
    s = schedule()
    end = window_end(utc(2025, 10, 26, 12, 0), DAILY, s, BERLIN)
    assert end == utc(2025, 10, 26, 6, 0)
    assert end - previous_boundary(end, DAILY, s, BERLIN) == timedelta(hours=25)


def test_just_before_a_dst_boundary_takes_the_day_before() -> None:
    s = schedule()
    assert window_end(utc(2025, 3, 30, 4, 59, 59), DAILY, s, BERLIN) == utc(2025, 3, 29, 6, 0)


def test_new_york_dst() -> None:
    s = schedule()
    # 2025-03-09 02:00 EST -> 03:00 EDT: 07:00 local is 11:00 UTC after, 12:00 UTC before.
    assert window_end(utc(2025, 3, 9, 11, 0), DAILY, s, NEW_YORK) == utc(2025, 3, 9, 11, 0)
    assert window_end(utc(2025, 3, 9, 10, 59), DAILY, s, NEW_YORK) == utc(2025, 3, 8, 12, 0)
    # 2025-11-02 back to EST.
    assert window_end(utc(2025, 11, 2, 12, 0), DAILY, s, NEW_YORK) == utc(2025, 11, 2, 12, 0)
    assert window_end(utc(2025, 11, 2, 11, 59), DAILY, s, NEW_YORK) == utc(2025, 11, 1, 11, 0)


def test_half_and_quarter_hour_offsets() -> None:
    s = schedule()
    assert window_end(utc(2025, 6, 2, 1, 30), DAILY, s, KOLKATA) == utc(2025, 6, 2, 1, 30)  # 07:00 IST
    assert window_end(utc(2025, 6, 2, 1, 29), DAILY, s, KOLKATA) == utc(2025, 6, 1, 1, 30)
    assert window_end(utc(2025, 6, 2, 1, 15), DAILY, s, KATHMANDU) == utc(2025, 6, 2, 1, 15)  # 07:00 +05:45


def test_local_date_not_utc_date_decides_the_day() -> None:
    # 2025-06-01 20:00 UTC is already 2 June 08:00 in Auckland (+12): today's 07:00 boundary has passed there.
    s = schedule()
    assert window_end(utc(2025, 6, 1, 20, 0), DAILY, s, AUCKLAND) == utc(2025, 6, 1, 19, 0)


def test_weekly_boundaries() -> None:
    s = schedule(day="mon")
    # Monday 2 June 2025.
    assert window_end(utc(2025, 6, 2, 7, 0), WEEKLY, s, ZoneInfo("UTC")) == utc(2025, 6, 2, 7, 0)
    assert window_end(utc(2025, 6, 2, 6, 59), WEEKLY, s, ZoneInfo("UTC")) == utc(2025, 5, 26, 7, 0)
    assert window_end(utc(2025, 6, 8, 23, 0), WEEKLY, s, ZoneInfo("UTC")) == utc(2025, 6, 2, 7, 0)  # Sunday
    assert window_end(utc(2025, 6, 4, 12, 0), WEEKLY, schedule(day="friday"), ZoneInfo("UTC")) == utc(
        2025, 5, 30, 7, 0)


def test_weekly_across_the_berlin_spring_change_is_one_local_week() -> None:
    s = schedule(day="sun")
    end = window_end(utc(2025, 3, 30, 12, 0), WEEKLY, s, BERLIN)
    start = previous_boundary(end, WEEKLY, s, BERLIN)
    assert end == utc(2025, 3, 30, 5, 0) and start == utc(2025, 3, 23, 6, 0)
    assert end - start == timedelta(days=7) - timedelta(hours=1)


def test_weekly_in_new_york_on_the_utc_day_after() -> None:
    s = schedule(at="22:00", day="sun")
    # Sunday 22:00 EDT is Monday 02:00 UTC.
    assert window_end(utc(2025, 6, 2, 2, 0), WEEKLY, s, NEW_YORK) == utc(2025, 6, 2, 2, 0)
    assert window_end(utc(2025, 6, 2, 1, 59), WEEKLY, s, NEW_YORK) == utc(2025, 5, 26, 2, 0)


def test_a_daily_at_inside_the_dst_gap_maps_after_the_gap_once() -> None:
    s = schedule(at="02:30")
    end = window_end(utc(2025, 3, 30, 12, 0), DAILY, s, BERLIN)
    assert end == utc(2025, 3, 30, 1, 30)  # 03:30 CEST: 02:30 does not exist that day
    assert previous_boundary(end, DAILY, s, BERLIN) == utc(2025, 3, 29, 1, 30)


def test_a_daily_at_inside_the_repeated_hour_is_its_first_occurrence() -> None:
    s = schedule(at="02:30")
    end = window_end(utc(2025, 10, 26, 12, 0), DAILY, s, BERLIN)
    assert end == utc(2025, 10, 26, 0, 30)  # 02:30 CEST, not 02:30 CET an hour later
    assert window_end(utc(2025, 10, 26, 1, 30), DAILY, s, BERLIN) == end


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Auckland",
                                  "Australia/Lord_Howe", "UTC"])
@pytest.mark.parametrize("period", [DAILY, WEEKLY])
def test_every_hour_of_a_year_has_one_consistent_boundary(zone: str, period: Period) -> None:
    tz = ZoneInfo(zone)
    s = schedule(at="07:15", day="wed")
    longest = timedelta(days=7 if period is WEEKLY else 1, hours=1)
    now = utc(2025, 1, 1)
    seen: set[datetime] = set()
    while now < utc(2026, 1, 1):
        end = window_end(now, period, s, tz)
        assert end <= now < end + longest
        assert window_end(end, period, s, tz) == end  # a boundary is its own window end
        local = end.astimezone(tz)
        assert local.time() == time(7, 15)
        if period is WEEKLY:
            assert local.weekday() == 2
        seen.add(end)
        now += timedelta(hours=1)
    assert len(seen) in ((365, 366) if period is DAILY else (52, 53, 54))


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        window_end(datetime(2025, 1, 1), DAILY, schedule(), BERLIN)


def test_parsing_config_values() -> None:
    assert parse_daily_at("07:00") == time(7, 0)
    assert parse_daily_at(" 7:05 ") == time(7, 5)
    assert parse_weekday("Mon") == 0 and parse_weekday("sunday") == 6
    for bad in ("25:00", "7", "07:60", "noon"):
        with pytest.raises(ValueError, match="daily_at"):
            parse_daily_at(bad)
    with pytest.raises(ValueError, match="weekly_day"):
        parse_weekday("someday")
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_timezone("Mars/Olympus_Mons")
    assert parse_timezone("Europe/Berlin") == BERLIN


def test_a_user_timezone_overrides_the_default_and_a_bad_one_falls_back() -> None:
    s = schedule(tz="Asia/Kolkata")
    assert s.timezone_for("Europe/Berlin") == BERLIN
    assert s.timezone_for(None) == KOLKATA
    assert s.timezone_for("") == KOLKATA
    assert s.timezone_for("Not/AZone") == KOLKATA
