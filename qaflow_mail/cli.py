"""The qaflow-mail command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail import logs
from qaflow_mail.commands.common import CommandError, iso, print_json, run_in_session
from qaflow_mail.commands.digests import add_user_set_arguments
from qaflow_mail.commands.subscriptions import cmd_user_add_file, cmd_user_show
from qaflow_mail.config import ConfigError, Settings, ensure_token_secret, find_config_path, load_settings, redacted
from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, Topic
from qaflow_mail.mail.addresses import is_valid_slug


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from qaflow_mail.server.app import prepare_database

    asyncio.run(prepare_database(settings))
    print(f"database ready: {settings.database.url}")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from qaflow_mail.server.app import serve

    print(
        f"QAFlow Mail: SMTP on {settings.smtp.host}:{settings.smtp.port}, domain {settings.site.domain}, "
        f"database {settings.database.url}. Ctrl-C stops.",
        flush=True,
    )
    asyncio.run(serve(settings))
    return 0


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    print_json(redacted(settings))
    return 0


def cmd_category_add(settings: Settings, args: argparse.Namespace) -> int:
    slug = args.slug.lower()
    if not is_valid_slug(slug):
        raise CommandError(f"invalid category slug {args.slug!r}: use a-z, 0-9 and '-', not a reserved name")

    async def work(session: AsyncSession) -> None:
        if await queries.category_by_slug(session, slug):
            raise CommandError(f"category {slug} exists already")
        await queries.add_category(session, slug=slug, name=args.name or slug.title(),
                                   allow_strangers=args.allow_strangers)

    run_in_session(settings, work)
    print(f"category {slug} added: mail to {slug}@{settings.site.domain} starts a topic")
    return 0


def cmd_category_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {"id": c.id, "slug": c.slug, "name": c.name, "allow_strangers": c.allow_strangers,
             "address": f"{c.slug}@{settings.site.domain}", "created_at": iso(c.created_at)}
            for c in await queries.list_categories(session)
        ]

    rows = run_in_session(settings, work)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            flag = " (strangers allowed)" if row["allow_strangers"] else ""
            print(f"{row['slug']:<20} {row['name']:<30} {row['address']}{flag}")
    return 0


def cmd_user_add(settings: Settings, args: argparse.Namespace) -> int:
    if args.file:
        if args.email:
            raise CommandError("give either EMAIL or --file, not both")
        return cmd_user_add_file(settings, args)
    if not args.email:
        raise CommandError("give an EMAIL address, or --file PATH")
    address = args.email.strip().lower()
    if "@" not in address or any(c.isspace() for c in address):
        raise CommandError(f"invalid email address {args.email!r}")

    async def work(session: AsyncSession) -> None:
        if await queries.user_by_email(session, address):
            raise CommandError(f"user {address} exists already")
        await queries.add_user(session, email=address, display_name=args.name or "", is_admin=args.admin,
                               now=datetime.now(UTC))

    run_in_session(settings, work)
    print(f"user {address} added{' (admin)' if args.admin else ''}")
    return 0


def cmd_user_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {"id": u.id, "email": u.email, "name": u.display_name, "admin": u.is_admin, "status": u.status,
             "created_at": iso(u.created_at)}
            for u in await queries.list_users(session)
        ]

    rows = run_in_session(settings, work)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(f"{row['email']:<40} {row['name']:<25} {row['status']}{' admin' if row['admin'] else ''}")
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {"id": t.id, "category": t.category, "subject": t.subject, "author": t.author_email,
             "posts": t.post_count, "created_at": iso(t.created_at), "last_post_at": iso(t.last_post_at)}
            for t in await queries.list_topics(session, category_slug=args.category)
        ]

    rows = run_in_session(settings, work)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(f"#{row['id']:<5} [{row['category']}] {row['subject']}  — {row['author']}, "
                  f"{row['posts']} post(s), last {row['last_post_at']}")
    return 0


def cmd_topic_show(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> dict[str, Any]:
        topic = await session.get(Topic, args.id)
        if topic is None:
            raise CommandError(f"no topic {args.id}")
        category = await session.get(Category, topic.category_id)
        assert category is not None  # a foreign key
        posts = await queries.topic_posts(session, topic.id)
        return {
            "id": topic.id, "category": category.slug, "subject": topic.subject,
            "created_at": iso(topic.created_at), "last_post_at": iso(topic.last_post_at),
            "posts": [
                {"id": p.id, "author": email, "message_id": p.message_id, "parent_id": p.parent_id,
                 "subject": p.subject, "created_at": iso(p.created_at), "body": p.body_text}
                for p, email in posts
            ],
        }

    data = run_in_session(settings, work)
    if args.json:
        print_json(data)
    else:
        print(f"#{data['id']} [{data['category']}] {data['subject']}")
        for post in data["posts"]:
            parent = f" (reply to #{post['parent_id']})" if post["parent_id"] else ""
            print(f"\n--- post #{post['id']} by {post['author']} at {post['created_at']}{parent}")
            print(post["body"])
    return 0


# Command modules under qaflow_mail/commands/, each with register(subparsers).
COMMAND_MODULES: tuple[str, ...] = ("subscriptions", "outbox", "digests", "corpus")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qaflow-mail", description="QAFlow Mail: the forum by email")
    parser.add_argument("--config", help="config file (else $QAFLOW_CONFIG, else config/qaflow.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="create or migrate the schema").set_defaults(func=cmd_db_upgrade)

    sub.add_parser("serve", help="run the gateway until SIGTERM/SIGINT").set_defaults(func=cmd_serve)
    sub.add_parser("check-config", help="print the effective config, secrets redacted").set_defaults(
        func=cmd_check_config)

    category = sub.add_parser("category", help="categories").add_subparsers(dest="category_command", required=True)
    c_add = category.add_parser("add", help="add a category")
    c_add.add_argument("slug")
    c_add.add_argument("--name")
    c_add.add_argument("--allow-strangers", action="store_true", help="unknown senders may post (staged users)")
    c_add.set_defaults(func=cmd_category_add)
    c_list = category.add_parser("list", help="list categories")
    c_list.add_argument("--json", action="store_true")
    c_list.set_defaults(func=cmd_category_list)

    user = sub.add_parser("user", help="users").add_subparsers(dest="user_command", required=True)
    u_add = user.add_parser("add", help="register a user, or many with --file (one address per line)")
    u_add.add_argument("email", nargs="?")
    u_add.add_argument("--name")
    u_add.add_argument("--admin", action="store_true")
    u_add.add_argument("--file", help="one address per line, 'Name <addr>' allowed; existing ones are skipped")
    u_add.add_argument("--json", action="store_true", help="with --file: the report as JSON")
    u_add.set_defaults(func=cmd_user_add)
    u_list = user.add_parser("list", help="list users")
    u_list.add_argument("--json", action="store_true")
    u_list.set_defaults(func=cmd_user_list)
    u_show = user.add_parser("show", help="a user and their subscriptions")
    u_show.add_argument("email")
    u_show.add_argument("--json", action="store_true")
    u_show.set_defaults(func=cmd_user_show)
    add_user_set_arguments(user.add_parser("set", help="change a user's settings (digest time zone)"))

    topics = sub.add_parser("topics", help="list topics, newest activity first")
    topics.add_argument("--category")
    topics.add_argument("--json", action="store_true")
    topics.set_defaults(func=cmd_topics)

    topic = sub.add_parser("topic", help="one topic").add_subparsers(dest="topic_command", required=True)
    t_show = topic.add_parser("show", help="a topic and its posts")
    t_show.add_argument("id", type=int)
    t_show.add_argument("--json", action="store_true")
    t_show.set_defaults(func=cmd_topic_show)

    for name in COMMAND_MODULES:
        importlib.import_module(f"qaflow_mail.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(find_config_path(args.config, os.environ), os.environ)
        settings = ensure_token_secret(settings)
        logs.configure(settings.logging.level, settings.logging.format)
        status: int = args.func(settings, args)
        return status
    except (CommandError, ConfigError) as exc:
        print(f"qaflow-mail: {exc}", file=sys.stderr)
        return 1
    except IntegrityError as exc:
        print(f"qaflow-mail: conflicts with existing data: {exc.orig}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
