"""The `user` commands: add (one, or many with --file), list, show, and set (the digest time zone).

    qaflow-mail user add EMAIL [--name N] [--admin]
    qaflow-mail user add --file PATH [--json]       (one address per line, 'Name <addr>' allowed; - is stdin)
    qaflow-mail user list [--json]
    qaflow-mail user show EMAIL [--json]
    qaflow-mail user set EMAIL --timezone ZONE      ("" or "default" clears it)
    qaflow-mail user set EMAIL --notify-replies all|direct|off
    qaflow-mail user rotate-tokens EMAIL            (every earlier unsubscribe link stops working)
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import (
    CommandError,
    Subparsers,
    explained,
    iso,
    print_bulk_report,
    print_json,
    read_input,
    run_in_session,
)
from qaflow_mail.config import Settings
from qaflow_mail.db.models import NotifyReplies
from qaflow_mail.outbound.digest_schedule import parse_timezone
from qaflow_mail.services import users
from qaflow_mail.services.bulk_import import BulkReport, bulk_add_users
from qaflow_mail.services.subscriptions import rotate_tokens
from qaflow_mail.services.users import InvalidEmail, UnknownUser, UserExists

CLEAR_TIMEZONE = ("", "default")


def cmd_user_add(settings: Settings, args: argparse.Namespace) -> int:
    if args.file:
        if args.email:
            raise CommandError("give either EMAIL or --file, not both")
        return _add_from_file(settings, args)
    if not args.email:
        raise CommandError("give an EMAIL address, or --file PATH")
    try:
        address = users.new_user_address(args.email)
    except InvalidEmail as exc:
        raise CommandError(str(exc)) from None

    async def work(session: AsyncSession) -> None:
        try:
            await users.add_user(session, email=address, name=args.name or "", admin=args.admin,
                                 now=datetime.now(UTC))
        except UserExists as exc:
            raise CommandError(str(exc)) from None

    run_in_session(settings, work)
    print(f"user {address} added{' (admin)' if args.admin else ''}")
    return 0


def _add_from_file(settings: Settings, args: argparse.Namespace) -> int:
    lines = read_input(args.file).splitlines()
    now = datetime.now(UTC)

    async def work(session: AsyncSession) -> BulkReport:
        return await bulk_add_users(session, lines, now)

    report = run_in_session(settings, work)
    print_bulk_report(report, as_json=args.json, subscribing=False)
    return 0 if not report.bad else 2


def cmd_user_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {"id": u.id, "email": u.email, "name": u.display_name, "admin": u.is_admin, "status": u.status,
             "created_at": iso(u.created_at)}
            for u in await users.list_users(session)
        ]

    rows = run_in_session(settings, work)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(f"{row['email']:<40} {row['name']:<25} {row['status']}{' admin' if row['admin'] else ''}")
    return 0


def cmd_user_show(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> dict[str, Any]:
        details = await explained(users.user_details(session, args.email))
        user = details.user
        return {
            "id": user.id,
            "email": user.email,
            "name": user.display_name,
            "admin": user.is_admin,
            "status": user.status,
            "bounce_score": user.bounce_score,
            "timezone": user.timezone,
            "announcements_muted": user.announcements_muted,
            "addresses": list(details.addresses),
            "created_at": iso(user.created_at),
            "subscriptions": [
                {"category": slug, "mode": sub.mode, "last_digest_at": iso(sub.last_digest_at)}
                for sub, slug in details.subscriptions
            ],
            "bounces": [
                {"kind": b.kind, "address": b.address, "received_at": iso(b.received_at), "diagnostic": b.diagnostic}
                for b in details.bounces
            ],
            "pending_confirmations": [
                {"kind": c.kind, "email": c.email, "created_at": iso(c.created_at)}
                for c in details.pending_confirmations
            ],
        }

    data = run_in_session(settings, work)
    if args.json:
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
    for bounce in data["bounces"]:
        print(f"  bounce {bounce['received_at']} {bounce['kind']} {bounce['address']}: {bounce['diagnostic'][:80]}")
    for pending in data["pending_confirmations"]:
        print(f"  waiting for confirmation: {pending['kind']} ({pending['email']}) since {pending['created_at']}")
    return 0


def cmd_user_set(settings: Settings, args: argparse.Namespace) -> int:
    """`user set EMAIL --timezone ZONE`: the zone digests are timed in for this user."""
    if getattr(args, "notify_replies", None) is not None:
        return _set_notify_replies(settings, args)
    if any(getattr(args, key, None) is not None for key in ("disabled", "admin", "name")):
        return _set_account(settings, args)
    if args.timezone is None:
        raise CommandError("nothing to set: give --timezone ZONE (an IANA name such as Europe/Berlin)")
    name = args.timezone.strip()
    zone: ZoneInfo | None = None
    if name.lower() not in CLEAR_TIMEZONE:
        try:
            zone = parse_timezone(name)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    async def work(session: AsyncSession) -> str:
        try:
            user = await users.set_timezone(session, args.email, zone)
        except UnknownUser as exc:
            raise CommandError(str(exc)) from None
        return user.email

    email = run_in_session(settings, work)
    shown = zone.key if zone is not None else f"the site default ({settings.digest.timezone})"
    print(f"user {email}: digests timed in {shown}")
    return 0


def _set_notify_replies(settings: Settings, args: argparse.Namespace) -> int:
    """`user set EMAIL --notify-replies all|direct|off`: which replies reach the user besides subscriptions."""
    if args.timezone is not None:
        raise CommandError("give --timezone or --notify-replies, one at a time")

    async def work(session: AsyncSession) -> str:
        user = await explained(users.find_user(session, args.email))
        user.notify_replies = NotifyReplies(args.notify_replies).value
        return user.email

    email = run_in_session(settings, work)
    print(f"user {email}: replies by mail: {args.notify_replies}")
    return 0


def cmd_user_rotate_tokens(settings: Settings, args: argparse.Namespace) -> int:
    """`user rotate-tokens EMAIL`: every unsubscribe link mailed to the user so far stops working."""
    async def work(session: AsyncSession) -> tuple[str, int]:
        user = await explained(users.find_user(session, args.email))
        return user.email, rotate_tokens(user)

    email, generation = run_in_session(settings, work)
    print(f"user {email}: earlier unsubscribe links no longer work (token generation {generation})")
    return 0


def _set_account(settings: Settings, args: argparse.Namespace) -> int:
    """`user set EMAIL --disable|--enable --admin|--no-admin --name N`."""
    if args.timezone is not None:
        raise CommandError("give --timezone on its own")

    async def work(session: AsyncSession) -> dict[str, Any]:
        user = await explained(users.set_flags(session, args.email, disabled=args.disabled, admin=args.admin,
                                               name=args.name))
        return {"email": user.email, "status": user.status, "admin": user.is_admin, "name": user.display_name}

    data = run_in_session(settings, work)
    print(f"user {data['email']}: {data['status']}{', admin' if data['admin'] else ''}"
          f"{', named ' + repr(data['name']) if args.name is not None else ''}")
    return 0


def cmd_user_erase(settings: Settings, args: argparse.Namespace) -> int:
    """`user erase EMAIL`: forget the person, keep their posts under "Removed user"."""
    async def work(session: AsyncSession) -> users.ErasedUser:
        return await explained(users.erase_user(session, args.email))

    erased = run_in_session(settings, work)
    print(f"user {erased.user_id} erased: {erased.addresses} address(es) and {erased.subscriptions} subscription(s) "
          f"forgotten; their posts are kept, by {users.ERASED_NAME!r}")
    return 0


def add_user_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `user set`."""
    parser.add_argument("email")
    enabled = parser.add_mutually_exclusive_group()
    enabled.add_argument("--disable", dest="disabled", action="store_true", default=None,
                         help="no more mail to or from this user")
    enabled.add_argument("--enable", dest="disabled", action="store_false",
                         help="active again (a bouncing user starts again with a clean score)")
    admin = parser.add_mutually_exclusive_group()
    admin.add_argument("--admin", dest="admin", action="store_true", default=None, help="make an admin")
    admin.add_argument("--no-admin", dest="admin", action="store_false", help="no longer an admin")
    parser.add_argument("--name", help="display name")
    parser.add_argument("--notify-replies", choices=[choice.value for choice in NotifyReplies],
                        help="replies by mail: all (in topics I posted in), direct (to me, and in my topics), off")
    parser.add_argument("--timezone", help='IANA time zone for digests, e.g. Europe/Berlin; "default" clears it')
    parser.set_defaults(func=cmd_user_set)


def register(subparsers: Subparsers) -> None:
    user = subparsers.add_parser("user", help="users").add_subparsers(dest="user_command", required=True)
    add = user.add_parser("add", help="register a user, or many with --file (one address per line)")
    add.add_argument("email", nargs="?")
    add.add_argument("--name")
    add.add_argument("--admin", action="store_true")
    add.add_argument("--file", help="one address per line, 'Name <addr>' allowed; existing ones are skipped")
    add.add_argument("--json", action="store_true", help="with --file: the report as JSON")
    add.set_defaults(func=cmd_user_add)
    listing = user.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_user_list)
    show = user.add_parser("show", help="a user and their subscriptions")
    show.add_argument("email")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_user_show)
    add_user_set_arguments(user.add_parser("set", help="change a user's settings (digest time zone, replies)"))
    erase = user.add_parser("erase", help="erase a user's personal data (GDPR); their posts stay, anonymous")
    erase.add_argument("email")
    erase.set_defaults(func=cmd_user_erase)
    rotate = user.add_parser("rotate-tokens", help="make every earlier unsubscribe link of a user stop working")
    rotate.add_argument("email")
    rotate.set_defaults(func=cmd_user_rotate_tokens)
