"""`category add SLUG [--name N] [--allow-strangers]` and `category list [--json]`."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.services import categories
from qaflow_mail.services.categories import CategoryExists, InvalidSlug


def cmd_category_add(settings: Settings, args: argparse.Namespace) -> int:
    try:
        slug = categories.normalize_slug(args.slug)
    except InvalidSlug as exc:
        raise CommandError(str(exc)) from None

    async def work(session: AsyncSession) -> None:
        try:
            await categories.add_category(session, slug=slug, name=args.name, allow_strangers=args.allow_strangers)
        except CategoryExists as exc:
            raise CommandError(str(exc)) from None

    run_in_session(settings, work)
    print(f"category {slug} added: mail to {slug}@{settings.site.domain} starts a topic")
    return 0


def cmd_category_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {"id": c.id, "slug": c.slug, "name": c.name, "allow_strangers": c.allow_strangers,
             "address": f"{c.slug}@{settings.site.domain}", "created_at": iso(c.created_at)}
            for c in await categories.list_categories(session)
        ]

    rows = run_in_session(settings, work)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            flag = " (strangers allowed)" if row["allow_strangers"] else ""
            print(f"{row['slug']:<20} {row['name']:<30} {row['address']}{flag}")
    return 0


def register(subparsers: Subparsers) -> None:
    category = subparsers.add_parser("category", help="categories").add_subparsers(
        dest="category_command", required=True)
    add = category.add_parser("add", help="add a category")
    add.add_argument("slug")
    add.add_argument("--name")
    add.add_argument("--allow-strangers", action="store_true", help="unknown senders may post (staged users)")
    add.set_defaults(func=cmd_category_add)
    listing = category.add_parser("list", help="list categories")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_category_list)
