"""`subscribe`, `unsubscribe`, and the functions behind `user show` and `user add --file`.

    qaflow-mail subscribe EMAIL --category SLUG [--mode each|daily|weekly|mute]
    qaflow-mail subscribe --file PATH --category SLUG [--mode M] [--json]    (one address per line; - is stdin)
    qaflow-mail unsubscribe EMAIL --category SLUG
    qaflow-mail user show EMAIL [--json]          -> cmd_user_show(settings, args)     (args.email, args.json)
    qaflow-mail user add --file PATH [--json]     -> cmd_user_add_file(settings, args) (args.file, args.json)
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, iso, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, SubscriptionMode, User, UserAddress
from qaflow_mail.subscriptions import BulkReport, bulk_add_users, bulk_subscribe, set_subscription

MODES = [mode.value for mode in SubscriptionMode]
MAX_BAD_LINES_SHOWN = 20


def _read_lines(path: str) -> list[str]:
    """The file's lines (UTF-8, a BOM tolerated; undecodable bytes become U+FFFD and fail address checks)."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data.decode("utf-8-sig", errors="replace").splitlines()


async def _category(session: AsyncSession, slug: str) -> Category:
    category = await queries.category_by_slug(session, slug)
    if category is None:
        raise CommandError(f"no category {slug!r} (see `qaflow-mail category list`)")
    return category


async def _user(session: AsyncSession, email: str) -> User:
    user = await queries.user_by_email(session, email)
    if user is None:
        raise CommandError(f"no user {email.strip().lower()!r} (add one with `qaflow-mail user add EMAIL`)")
    return user


def _print_report(report: BulkReport, *, as_json: bool, subscribing: bool) -> None:
    if as_json:
        print_json(report.as_dict())
        return
    parts = [f"{report.lines} line(s), {report.addresses} address(es)",
             f"users: {report.users_created} created, {report.users_existing} existing"]
    if subscribing:
        parts.append(f"subscriptions: {report.subscriptions_created} created, "
                     f"{report.subscriptions_existing} existing (kept)")
    if report.duplicates:
        parts.append(f"{report.duplicates} duplicate(s) ignored")
    parts.append(f"{len(report.bad)} bad line(s)")
    print("; ".join(parts))
    for bad in report.bad[:MAX_BAD_LINES_SHOWN]:
        print(f"  line {bad.line}: {bad.reason}: {bad.text}", file=sys.stderr)
    if len(report.bad) > MAX_BAD_LINES_SHOWN:
        print(f"  ... and {len(report.bad) - MAX_BAD_LINES_SHOWN} more (use --json for all)", file=sys.stderr)


def cmd_subscribe(settings: Settings, args: argparse.Namespace) -> int:
    mode = SubscriptionMode(args.mode)
    now = datetime.now(UTC)
    if args.file is not None:
        if args.email is not None:
            raise CommandError("give either EMAIL or --file, not both")
        lines = _read_lines(args.file)

        async def bulk(session: AsyncSession) -> BulkReport:
            return await bulk_subscribe(session, lines, await _category(session, args.category), mode, now)

        report = run_in_session(settings, bulk)
        _print_report(report, as_json=args.json, subscribing=True)
        return 0 if not report.bad else 2
    if args.email is None:
        raise CommandError("give an EMAIL or --file PATH")

    async def one(session: AsyncSession) -> tuple[str, str, SubscriptionMode | None]:
        user = await _user(session, args.email)
        category = await _category(session, args.category)
        previous = await set_subscription(session, user, category, mode, now)
        return user.email, category.slug, previous

    email, slug, previous = run_in_session(settings, one)
    if args.json:
        print_json({"email": email, "category": slug, "mode": mode.value,
                    "previous": None if previous is None else previous.value})
    elif previous is mode:
        print(f"{email} already had {slug} in mode {mode.value}")
    else:
        was = "new" if previous is None else f"was {previous.value}"
        print(f"{email}: {slug} set to {mode.value} ({was})")
    return 0


def cmd_unsubscribe(settings: Settings, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)

    async def work(session: AsyncSession) -> tuple[str, str, SubscriptionMode | None]:
        user = await _user(session, args.email)
        category = await _category(session, args.category)
        previous = await set_subscription(session, user, category, SubscriptionMode.MUTE, now)
        return user.email, category.slug, previous

    email, slug, previous = run_in_session(settings, work)
    if previous is SubscriptionMode.MUTE:
        print(f"{email} was already unsubscribed from {slug}")
    else:
        print(f"{email} unsubscribed from {slug} (mode mute)")
    return 0


async def user_details(session: AsyncSession, email: str) -> dict[str, Any]:
    """The user behind ``email`` (primary or further address) and their subscriptions, as `user show` prints."""
    user = await _user(session, email)
    addresses = (
        await session.scalars(
            select(UserAddress.email).where(UserAddress.user_id == user.id).order_by(UserAddress.email)
        )
    ).all()
    return {
        "id": user.id,
        "email": user.email,
        "name": user.display_name,
        "admin": user.is_admin,
        "status": user.status,
        "bounce_score": user.bounce_score,
        "timezone": user.timezone,
        "announcements_muted": user.announcements_muted,
        "addresses": list(addresses),
        "created_at": iso(user.created_at),
        "subscriptions": [
            {"category": slug, "mode": sub.mode, "last_digest_at": iso(sub.last_digest_at)}
            for sub, slug in await queries.subscriptions_of(session, user.id)
        ],
    }


def cmd_user_show(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> dict[str, Any]:
        return await user_details(session, args.email)

    data = run_in_session(settings, work)
    if getattr(args, "json", False):
        print_json(data)
        return 0
    flags = [data["status"], *(["admin"] if data["admin"] else [])]
    print(f"{data['email']}  {data['name'] or '(no name)'}  [{', '.join(flags)}]  bounce score {data['bounce_score']}")
    for address in data["addresses"]:
        print(f"  also: {address}")
    if data["announcements_muted"]:
        print("  announcements: muted")
    if not data["subscriptions"]:
        print("  no subscriptions")
    for sub in data["subscriptions"]:
        digest = f", last digest {sub['last_digest_at']}" if sub["last_digest_at"] else ""
        print(f"  {sub['category']:<24} {sub['mode']}{digest}")
    return 0


def cmd_user_add_file(settings: Settings, args: argparse.Namespace) -> int:
    lines = _read_lines(args.file)
    now = datetime.now(UTC)

    async def work(session: AsyncSession) -> BulkReport:
        return await bulk_add_users(session, lines, now)

    report = run_in_session(settings, work)
    _print_report(report, as_json=getattr(args, "json", False), subscribing=False)
    return 0 if not report.bad else 2


def register(subparsers: Any) -> None:
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
