"""`category add SLUG [--name N] [--allow-strangers] [--private]`, `category set SLUG --private|--public|
--default-mode each|daily|weekly|…` and `category list [--json]`. A private category is mail only: not on the web
at all."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.services import categories, moderation, users
from qaflow_mail.services.categories import CategoryExists, InvalidSlug, UnknownCategory
from qaflow_mail.services.users import UnknownUser


def cmd_category_add(settings: Settings, args: argparse.Namespace) -> int:
    try:
        slug = categories.normalize_slug(args.slug)
    except InvalidSlug as exc:
        raise CommandError(str(exc)) from None

    async def work(session: AsyncSession) -> None:
        try:
            category = await categories.add_category(session, slug=slug, name=args.name,
                                                     allow_strangers=args.allow_strangers)
        except CategoryExists as exc:
            raise CommandError(str(exc)) from None
        category.private = args.private
        category.moderated = args.moderated

    run_in_session(settings, work)
    private = " (private: not shown on the web)" if args.private else ""
    print(f"category {slug} added: mail to {slug}@{settings.site.domain} starts a topic{private}")
    return 0


def cmd_category_set(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> None:
        try:
            category = await categories.find_category(session, args.slug)
        except UnknownCategory as exc:
            raise CommandError(str(exc)) from None
        if args.private is not None:
            category.private = args.private
        if args.moderated is not None:
            category.moderated = args.moderated
        await categories.update_category(session, category.slug, name=args.name, allow_strangers=args.allow_strangers,
                                         default_mode=args.default_mode)

    if (args.private is None and args.moderated is None and args.name is None and args.allow_strangers is None
            and args.default_mode is None):
        raise CommandError("nothing to change: give --private or --public, --moderated or --unmoderated, "
                           "--name NAME, --allow-strangers or --members-only, --default-mode MODE or "
                           "--site-default-mode")
    if args.name is not None and not args.name.strip():
        raise CommandError("--name cannot be empty")
    run_in_session(settings, work)
    if args.private is not None:
        state = "private: mail only, not shown on the web" if args.private else "public: shown on the web"
        print(f"category {args.slug.lower()} is {state}")
    if args.moderated is not None:
        state = "moderated: every post waits for a moderator" if args.moderated else "not moderated"
        print(f"category {args.slug.lower()} is {state}")
    if args.name is not None:
        print(f"category {args.slug.lower()} is named {args.name.strip()!r}")
    if args.allow_strangers is not None:
        who = "anyone may post (unknown senders become staged users)" if args.allow_strangers else "members only"
        print(f"category {args.slug.lower()}: {who}")
    if args.default_mode is not None:
        mode = args.default_mode or f"the site's default ({settings.subscriptions.default_mode})"
        print(f"category {args.slug.lower()}: a join that names no mode gets {mode}")
    return 0


def cmd_category_remove(settings: Settings, args: argparse.Namespace) -> int:
    """`category remove SLUG [--force]`: refused while it has topics, unless --force removes them too."""
    async def work(session: AsyncSession) -> categories.RemovedCategory:
        try:
            return await categories.remove_category(session, args.slug, force=args.force)
        except (UnknownCategory, categories.CategoryInUse) as exc:
            raise CommandError(str(exc)) from None

    removed = run_in_session(settings, work)
    gone = f" with {removed.topics} topic(s) and {removed.posts} post(s)" if removed.topics else ""
    print(f"category {removed.slug} removed{gone}")
    return 0


def cmd_category_moderator_add(settings: Settings, args: argparse.Namespace) -> int:
    """`category moderator add SLUG EMAIL`: EMAIL's user decides on SLUG's held posts."""
    async def work(session: AsyncSession) -> bool:
        try:
            category = await categories.find_category(session, args.slug)
            user = await users.find_user(session, args.email)
        except (UnknownCategory, UnknownUser) as exc:
            raise CommandError(str(exc)) from None
        return await moderation.add_moderator(session, category=category, user=user)

    added = run_in_session(settings, work)
    print(f"{args.email.lower()} {'now moderates' if added else 'already moderates'} {args.slug.lower()}")
    return 0


def cmd_category_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {"id": c.id, "slug": c.slug, "name": c.name, "allow_strangers": c.allow_strangers, "private": c.private,
             "address": f"{c.slug}@{settings.site.domain}", "created_at": iso(c.created_at),
             "default_mode": categories.join_default_mode(c, settings.subscriptions.default_mode).value}
            for c in await categories.list_categories(session)
        ]

    rows = run_in_session(settings, work)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            flag = (" (strangers allowed)" if row["allow_strangers"] else "") + (" (private)" if row["private"] else "")
            print(f"{row['slug']:<20} {row['name']:<30} {row['address']}{flag}")
    return 0


def register(subparsers: Subparsers) -> None:
    category = subparsers.add_parser("category", help="categories").add_subparsers(
        dest="category_command", required=True)
    add = category.add_parser("add", help="add a category")
    add.add_argument("slug")
    add.add_argument("--name")
    add.add_argument("--allow-strangers", action="store_true", help="unknown senders may post (staged users)")
    add.add_argument("--private", action="store_true", help="mail only: not listed on the web, its pages 404")
    add.add_argument("--moderated", action="store_true", help="every post waits for a moderator")
    add.set_defaults(func=cmd_category_add)
    change = category.add_parser("set", help="change a category")
    change.add_argument("slug")
    change.add_argument("--name", help="the category's display name")
    strangers = change.add_mutually_exclusive_group()
    strangers.add_argument("--allow-strangers", dest="allow_strangers", action="store_true", default=None,
                           help="unknown senders may post (staged users)")
    strangers.add_argument("--members-only", dest="allow_strangers", action="store_false",
                           help="only registered users may post")
    visibility = change.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=None,
                            help="mail only: not listed on the web, its pages 404")
    visibility.add_argument("--public", dest="private", action="store_false", help="shown on the web")
    moderated = change.add_mutually_exclusive_group()
    moderated.add_argument("--moderated", dest="moderated", action="store_true", default=None,
                           help="every post waits for a moderator")
    moderated.add_argument("--unmoderated", dest="moderated", action="store_false", help="posts go out at once")
    mode = change.add_mutually_exclusive_group()
    mode.add_argument("--default-mode", choices=[m.value for m in categories.JOIN_DEFAULT_MODES],
                      help="what a join that names no mode gets here")
    mode.add_argument("--site-default-mode", dest="default_mode", action="store_const", const="",
                      help="joins here get [subscriptions] default_mode again")
    change.set_defaults(func=cmd_category_set)
    moderator = category.add_parser("moderator", help="category moderators").add_subparsers(
        dest="moderator_command", required=True)
    moderator_add = moderator.add_parser("add", help="let a user decide on the category's held posts")
    moderator_add.add_argument("slug")
    moderator_add.add_argument("email")
    moderator_add.set_defaults(func=cmd_category_moderator_add)
    remove = category.add_parser("remove", help="remove a category (refused while it has topics, unless --force)")
    remove.add_argument("slug")
    remove.add_argument("--force", action="store_true", help="also delete its topics and their posts")
    remove.set_defaults(func=cmd_category_remove)
    listing = category.add_parser("list", help="list categories")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_category_list)
