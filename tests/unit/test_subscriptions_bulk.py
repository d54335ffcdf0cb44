"""Bulk user and subscription import: line parsing (pure), and the batched writes against a real database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Category, CategorySubscription, SubscriptionMode, User, UserAddress, UserStatus
from qaflow_mail.services.bulk_import import CHUNK, ParsedLine, bulk_add_users, bulk_subscribe, parse_address_line

T = TypeVar("T")
NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   ", None),
        ("# a comment", None),
        ("   # indented comment <x@y.org>", None),
        ("bob@example.net", ParsedLine("bob@example.net", "")),
        ("  Bob@Example.NET  ", ParsedLine("bob@example.net", "")),
        ("<bob@example.net>", ParsedLine("bob@example.net", "")),
        ("Bob Builder <bob@example.net>", ParsedLine("bob@example.net", "Bob Builder")),
        ('"Builder, Bob" <bob@example.net>', ParsedLine("bob@example.net", "Builder, Bob")),
        ("=?utf-8?q?J=C3=B6rg?= <jorg@example.de>", ParsedLine("jorg@example.de", "Jörg")),
        ("Jörg <jorg@example.de>", ParsedLine("jorg@example.de", "Jörg")),
        ("first.last+tag@sub.example.co.uk", ParsedLine("first.last+tag@sub.example.co.uk", "")),
    ],
)
def test_good_and_ignored_lines(line: str, expected: ParsedLine | None) -> None:
    assert parse_address_line(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not an address", "not an email address"),
        ("bob@", "not an email address"),
        ("<>", "no address found"),
        ("a@b.com, c@d.com", "more than one address"),
        ("Ann <a@b.com> trailing", "more than one address"),
        ("user@localhost", "invalid domain"),
        ("user@exa_mple.com", "invalid domain"),
        ("a..b@example.com", "invalid local part"),
        ("jörg@example.de", "non-ASCII"),
        ("x" * 65 + "@example.com", "invalid local part"),
        ("a@" + "b" * 320 + ".com", "longer than 320"),
    ],
)
def test_bad_lines_say_why(line: str, reason: str) -> None:
    result = parse_address_line(line)
    assert isinstance(result, str), result
    assert reason in result


# --- against the database -------------------------------------------------------------------------------------


def run(
    settings: Settings, work: Callable[[AsyncSession], Awaitable[T]], *, count_statements: list[int] | None = None
) -> T:
    async def go() -> T:
        engine = create_engine(settings.database.url)
        if count_statements is not None:
            def count(*_args: Any) -> None:
                count_statements[0] += 1

            event.listen(engine.sync_engine, "before_cursor_execute", count)
        try:
            async with session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def seed(settings: Settings) -> int:
    async def work(session: AsyncSession) -> int:
        category = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        carol = await queries.add_user(session, email="carol@example.com", display_name="Carol", now=NOW)
        session.add(UserAddress(user_id=carol.id, email="carol.alt@example.com"))
        dave = await queries.add_user(session, email="dave@example.org", display_name="Dave", now=NOW)
        session.add(CategorySubscription(user_id=dave.id, category_id=category.id, mode=SubscriptionMode.DAILY,
                                         created_at=NOW))
        return category.id

    return run(settings, work)


INPUT = [
    "# moved over from the old list",  # 1
    "Alice Liddell <Alice@Example.org>",  # 2  new
    "",  # 3
    "carol@example.com",  # 4  exists (primary)
    "Carol Again <carol.alt@example.com>",  # 5  exists (a further address of Carol)
    "this is not an address",  # 6  bad
    "dave@example.org",  # 7  exists, already subscribed (daily)
    "alice@example.org",  # 8  duplicate of line 2
    "bob@example.net, eve@example.net",  # 9  bad
    "bob@example.net",  # 10 new
]


def test_bulk_add_users_creates_missing_and_reports_bad_lines(settings: Settings) -> None:
    seed(settings)
    report = run(settings, lambda s: bulk_add_users(s, INPUT, NOW))
    assert (report.lines, report.addresses, report.users_created, report.users_existing, report.duplicates) == (
        10, 5, 2, 3, 1
    )
    assert [(b.line, b.reason) for b in report.bad] == [
        (6, "not an email address (user@domain)"),
        (9, "more than one address on the line"),
    ]
    assert report.bad[0].text == "this is not an address"

    async def users(session: AsyncSession) -> dict[str, tuple[str, str]]:
        rows = (await session.scalars(select(User))).all()
        return {u.email: (u.display_name, u.status) for u in rows}

    found = run(settings, users)
    assert found == {
        "alice@example.org": ("Alice Liddell", UserStatus.ACTIVE),
        "bob@example.net": ("", UserStatus.ACTIVE),
        "carol@example.com": ("Carol", UserStatus.ACTIVE),
        "dave@example.org": ("Dave", UserStatus.ACTIVE),
    }
    again = run(settings, lambda s: bulk_add_users(s, INPUT, NOW))
    assert (again.users_created, again.users_existing) == (0, 5)


def test_bulk_subscribe_creates_users_and_subscriptions_and_keeps_existing_ones(settings: Settings) -> None:
    category_id = seed(settings)

    async def subscribe(session: AsyncSession) -> Any:
        category = await session.get(Category, category_id)
        assert category is not None
        return await bulk_subscribe(session, INPUT, category, SubscriptionMode.EACH, NOW)

    report = run(settings, subscribe)
    # alice and bob are new users; carol (two lines, one user) gets one subscription; dave keeps "daily".
    assert (report.users_created, report.subscriptions_created, report.subscriptions_existing) == (2, 3, 1)
    assert len(report.bad) == 2

    async def modes(session: AsyncSession) -> dict[str, str]:
        rows = await session.execute(
            select(User.email, CategorySubscription.mode).join(CategorySubscription,
                                                               CategorySubscription.user_id == User.id)
        )
        return {email: mode for email, mode in rows}

    assert run(settings, modes) == {
        "alice@example.org": "each",
        "bob@example.net": "each",
        "carol@example.com": "each",
        "dave@example.org": "daily",
    }
    again = run(settings, subscribe)
    assert (again.users_created, again.subscriptions_created, again.subscriptions_existing) == (0, 0, 4)


def test_bulk_subscribe_batches_its_queries(settings: Settings) -> None:
    category_id = seed(settings)
    lines = [f"User {i} <user{i}@example.org>" for i in range(3 * CHUNK + 17)] + ["carol@example.com"]

    async def subscribe(session: AsyncSession) -> Any:
        category = await session.get(Category, category_id)
        assert category is not None
        return await bulk_subscribe(session, lines, category, SubscriptionMode.WEEKLY, NOW)

    statements = [0]
    report = run(settings, subscribe, count_statements=statements)
    assert (report.users_created, report.subscriptions_created) == (3 * CHUNK + 17, 3 * CHUNK + 18)
    chunks = len(range(0, len(lines), CHUNK))
    # Per chunk at most: look up users (primary, then further addresses), insert the missing ones, look those up
    # again (2), look up the existing subscriptions, insert the new ones, count them. Never one query per line.
    assert statements[0] <= 8 * chunks + 5, statements[0]

    async def counts(session: AsyncSession) -> tuple[int, int]:
        users = await session.scalar(select(func.count()).select_from(User))
        subs = await session.scalar(
            select(func.count()).select_from(CategorySubscription).where(CategorySubscription.mode == "weekly")
        )
        return int(users or 0), int(subs or 0)

    assert run(settings, counts) == (3 * CHUNK + 17 + 2, 3 * CHUNK + 18)
