"""`topics [--category SLUG] [--json]` lists topics, newest activity first; `topic show ID [--json]` shows one."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, Topic


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


def register(subparsers: Subparsers) -> None:
    topics = subparsers.add_parser("topics", help="list topics, newest activity first")
    topics.add_argument("--category")
    topics.add_argument("--json", action="store_true")
    topics.set_defaults(func=cmd_topics)

    topic = subparsers.add_parser("topic", help="one topic").add_subparsers(dest="topic_command", required=True)
    show = topic.add_parser("show", help="a topic and its posts")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_topic_show)
