"""The retry schedule of the outbox: exponential from the base, capped, never negative."""

from __future__ import annotations

from datetime import timedelta

import pytest

from qaflow_mail.outbound.outbox import retry_delay


@pytest.mark.parametrize(
    ("attempts", "seconds"),
    [(1, 60), (2, 120), (3, 240), (4, 480), (5, 960), (6, 1800), (7, 1800), (50, 1800)],
)
def test_delay_doubles_from_base_until_the_cap(attempts: int, seconds: float) -> None:
    assert retry_delay(attempts, base_seconds=60, max_seconds=1800) == timedelta(seconds=seconds)


def test_no_attempt_yet_means_no_wait() -> None:
    assert retry_delay(0, base_seconds=60, max_seconds=1800) == timedelta(0)


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert retry_delay(10_000, base_seconds=60, max_seconds=6 * 3600) == timedelta(hours=6)


def test_the_schedule_never_shrinks() -> None:
    delays = [retry_delay(n, base_seconds=0.5, max_seconds=300) for n in range(1, 40)]
    assert delays == sorted(delays)
    assert delays[0] == timedelta(seconds=0.5)
    assert delays[-1] == timedelta(seconds=300)
