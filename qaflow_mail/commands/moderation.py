"""The `moderation` commands: the queue of held posts, and approving or rejecting one.

    qaflow-mail moderation list [--json]
    qaflow-mail moderation approve POST_ID
    qaflow-mail moderation reject POST_ID --reason R
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import Any

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json, with_deps
from qaflow_mail.config import Settings
from qaflow_mail.db.models import ModerationDecision
from qaflow_mail.deps import Deps
from qaflow_mail.replies import Refusal
from qaflow_mail.services import moderation


def cmd_moderation_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(deps: Deps) -> list[dict[str, Any]]:
        async with deps.sessions() as session:
            return [
                {"post_id": s.post_id, "category": s.category, "subject": s.subject, "author": s.author,
                 "reason": s.reason, "held_at": iso(s.held_at), "excerpt": s.excerpt}
                for s in await moderation.pending(session)
            ]

    rows = asyncio.run(with_deps(settings, work))
    if args.json:
        print_json(rows)
    elif not rows:
        print("no post waits for a moderator")
    for row in [] if args.json else rows:
        print(f"{row['post_id']:>6}  {row['category']:<16} {row['author']:<30} {row['subject']}")
        print(f"        held: {row['reason']}")
    return 0


def _decide(settings: Settings, post_id: int, decision: ModerationDecision, reason: str) -> int:
    async def work(deps: Deps) -> moderation.Decided | Refusal:
        async with deps.sessions() as session, session.begin():
            return await moderation.decide(session, deps, post_id=post_id, decision=decision, moderator=None,
                                           reason=reason, now=datetime.now(UTC))

    decided = asyncio.run(with_deps(settings, work))
    if isinstance(decided, Refusal):
        raise CommandError(decided.reason)
    extra = ", its notifications are on their way" if decision is ModerationDecision.APPROVED else ""
    print(f"post {post_id} {decision.value}{extra}")
    return 0


def cmd_moderation_approve(settings: Settings, args: argparse.Namespace) -> int:
    return _decide(settings, args.post_id, ModerationDecision.APPROVED, "")


def cmd_moderation_reject(settings: Settings, args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise CommandError("give the author a reason: --reason R")
    return _decide(settings, args.post_id, ModerationDecision.REJECTED, args.reason.strip())


def register(subparsers: Subparsers) -> None:
    group = subparsers.add_parser("moderation", help="held posts").add_subparsers(
        dest="moderation_command", required=True)
    listing = group.add_parser("list", help="posts waiting for a moderator")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_moderation_list)
    approve = group.add_parser("approve", help="publish a held post (its notifications go out now)")
    approve.add_argument("post_id", type=int)
    approve.set_defaults(func=cmd_moderation_approve)
    reject = group.add_parser("reject", help="refuse a held post (kept on record; the author is told why)")
    reject.add_argument("post_id", type=int)
    reject.add_argument("--reason", required=True)
    reject.set_defaults(func=cmd_moderation_reject)
