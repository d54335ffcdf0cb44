"""`subscribe` and `unsubscribe`: a user's mode for a category, or many users' at once.

    qaflow-mail subscribe EMAIL --category SLUG [--mode each|daily|weekly|mute] [--json]
    qaflow-mail subscribe --file PATH --category SLUG [--mode M] [--json]    (one address per line; - is stdin)
    qaflow-mail unsubscribe EMAIL --category SLUG
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import (
    CommandError,
    Subparsers,
    explained,
    print_bulk_report,
    print_json,
    read_input,
    run_in_session,
)
from qaflow_mail.config import Settings
from qaflow_mail.db.models import SubscriptionMode
from qaflow_mail.services import subscriptions
from qaflow_mail.services.bulk_import import BulkReport, bulk_subscribe
from qaflow_mail.services.categories import find_category
from qaflow_mail.services.subscriptions import SubscriptionChange

MODES = [mode.value for mode in SubscriptionMode]

T = TypeVar("T")


def _run(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    return run_in_session(settings, lambda session: explained(work(session)))


def cmd_subscribe(settings: Settings, args: argparse.Namespace) -> int:
    mode = SubscriptionMode(args.mode)
    now = datetime.now(UTC)
    if args.file is not None:
        if args.email is not None:
            raise CommandError("give either EMAIL or --file, not both")
        lines = read_input(args.file).splitlines()

        async def bulk(session: AsyncSession) -> BulkReport:
            return await bulk_subscribe(session, lines, await find_category(session, args.category), mode, now)

        report = _run(settings, bulk)
        print_bulk_report(report, as_json=args.json, subscribing=True)
        return 0 if not report.bad else 2
    if args.email is None:
        raise CommandError("give an EMAIL or --file PATH")

    async def one(session: AsyncSession) -> SubscriptionChange:
        return await subscriptions.subscribe(session, email=args.email, category_slug=args.category, mode=mode,
                                             now=now)

    change = _run(settings, one)
    if args.json:
        print_json({"email": change.email, "category": change.category_slug, "mode": change.mode.value,
                    "previous": None if change.previous is None else change.previous.value})
    elif change.previous is change.mode:
        print(f"{change.email} already had {change.category_slug} in mode {change.mode.value}")
    else:
        was = "new" if change.previous is None else f"was {change.previous.value}"
        print(f"{change.email}: {change.category_slug} set to {change.mode.value} ({was})")
    return 0


def cmd_unsubscribe(settings: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)

    async def work(session: AsyncSession) -> SubscriptionChange:
        return await subscriptions.unsubscribe(session, email=args.email, category_slug=args.category, now=now)

    change = _run(settings, work)
    if change.previous is SubscriptionMode.MUTE:
        print(f"{change.email} was already unsubscribed from {change.category_slug}")
    else:
        print(f"{change.email} unsubscribed from {change.category_slug} (mode mute)")
    return 0


def register(subparsers: Subparsers) -> None:
    sub = subparsers.add_parser("subscribe", help="set a user's subscription to a category (or many, --file)")
    sub.add_argument("email", nargs="?", help="the user's address (omit with --file)")
    sub.add_argument("--file", metavar="PATH",
                     help="one address per line ('Name <addr>' allowed, # comments); - reads stdin; "
                          "missing users and subscriptions are created, existing ones kept")
    sub.add_argument("--category", required=True, metavar="SLUG")
    sub.add_argument("--mode", choices=MODES, default=SubscriptionMode.EACH.value,
                     help="each: every post by mail; daily/weekly: a digest; mute: nothing (default: each)")
    sub.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.set_defaults(func=cmd_subscribe)

    unsub = subparsers.add_parser("unsubscribe", help="stop a user's mail for a category (mode mute)")
    unsub.add_argument("email")
    unsub.add_argument("--category", required=True, metavar="SLUG")
    unsub.set_defaults(func=cmd_unsubscribe)
