"""`topics [--category SLUG] [--json]` lists topics, newest activity first; `topic show ID [--json]` shows one.

The operator's view through services/topics: every category (private ones too), published post counts, views,
and in `topic show` every post with its status (held and rejected posts included, marked).
"""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.services import topics


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {"id": t.id, "category": t.category, "subject": t.subject, "author": t.author, "posts": t.posts,
             "views": t.views, "created_at": iso(t.created_at), "last_post_at": iso(t.last_post_at)}
            for t in await topics.admin_topics(session, category_slug=args.category)
        ]

    rows = run_in_session(settings, work)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            print(f"#{row['id']:<5} [{row['category']}] {row['subject']}  — {row['author']}, "
                  f"{row['posts']} post(s), {row['views']} view(s), last {row['last_post_at']}")
    return 0


def cmd_topic_show(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> dict[str, Any]:
        detail = await topics.admin_topic(session, args.id)
        if detail is None:
            raise CommandError(f"no topic {args.id}")
        return {
            "id": detail.id, "category": detail.category, "private": detail.private, "subject": detail.subject,
            "views": detail.views, "created_at": iso(detail.created_at), "last_post_at": iso(detail.last_post_at),
            "posts": [
                {"id": p.id, "author": p.author, "message_id": p.message_id, "parent_id": p.parent_id,
                 "subject": p.subject, "status": p.status, "created_at": iso(p.created_at), "body": p.body}
                for p in detail.posts
            ],
        }

    data = run_in_session(settings, work)
    if args.json:
        print_json(data)
    else:
        print(f"#{data['id']} [{data['category']}] {data['subject']}  ({data['views']} view(s))")
        for post in data["posts"]:
            parent = f" (reply to #{post['parent_id']})" if post["parent_id"] else ""
            status = "" if post["status"] == "published" else f" [{post['status']}]"
            print(f"\n--- post #{post['id']} by {post['author']} at {post['created_at']}{parent}{status}")
            print(post["body"])
    return 0


def register(subparsers: Subparsers) -> None:
    listing = subparsers.add_parser("topics", help="list topics, newest activity first")
    listing.add_argument("--category")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_topics)

    topic = subparsers.add_parser("topic", help="one topic").add_subparsers(dest="topic_command", required=True)
    show = topic.add_parser("show", help="a topic and its posts")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_topic_show)
