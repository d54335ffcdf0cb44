"""Where does this message go: a verified reply token, else In-Reply-To then References, else a new topic."""

from __future__ import annotations

import dataclasses

from qaflow_mail.db import queries
from qaflow_mail.db.models import ANNOUNCEMENTS_SLUG, Category, Post, Topic
from qaflow_mail.errors import BAD_TOKEN, UNKNOWN_RECIPIENT, SmtpReply
from qaflow_mail.mail.addresses import NewTopic, Reply
from qaflow_mail.mail.threads import parent_candidates, resolve_parent
from qaflow_mail.outbound.digests import DIGEST_REPLY, find_digest_reference
from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.pipeline.tokens import verify_reply_token


async def _category_of(ctx: Context, post: Post) -> Category | None:
    topic = await ctx.session.get(Topic, post.topic_id)
    return None if topic is None else await ctx.session.get(Category, topic.category_id)


ANNOUNCEMENTS_ARE_PUBLISHED = SmtpReply(
    550, "5.7.1",
    "Announcements are published by the forum's admins and take no posts or replies by mail",
)


def _postable(ctx: Context) -> Context | Outcome:
    """Nobody posts into the announcements category: its topics are made only by publishing an announcement."""
    if ctx.category is not None and ctx.category.slug == ANNOUNCEMENTS_SLUG:
        return rejected(ANNOUNCEMENTS_ARE_PUBLISHED, "post into the announcements category")
    return ctx


async def resolve_thread(ctx: Context) -> Context | Outcome:
    destination = ctx.destination
    if isinstance(destination, Reply):
        ids = verify_reply_token(destination.token, settings=ctx.deps.settings, today=ctx.now.date())
        parent = None if ids is None else await ctx.session.get(Post, ids[0])
        if ids is None or parent is None:
            return rejected(BAD_TOKEN, "invalid or expired reply token")
        category = await _category_of(ctx, parent)
        return _postable(dataclasses.replace(ctx, parent=parent, category=category, token_ids=ids))
    if not isinstance(destination, NewTopic):
        raise TypeError(f"resolve_thread cannot route {destination!r}")
    category = await queries.category_by_slug(ctx.session, destination.category_slug)
    if category is None:
        return rejected(UNKNOWN_RECIPIENT, f"no category {destination.category_slug}")
    parsed = ctx.parsed
    candidates = parent_candidates(
        message_id=parsed.message_id, in_reply_to=parsed.in_reply_to, references=parsed.references
    )
    known = await queries.posts_by_message_ids(ctx.session, candidates)
    choice = resolve_parent(token_post_id=None, candidates=candidates, lookup=known, in_reply_to=parsed.in_reply_to)
    if choice.parent_post_id is None:
        if candidates and await find_digest_reference(ctx.session, candidates) is not None:
            return rejected(DIGEST_REPLY, "reply to a whole digest")
        return _postable(dataclasses.replace(ctx, category=category, candidates=candidates))
    parent = await ctx.session.get(Post, choice.parent_post_id)
    assert parent is not None
    return _postable(dataclasses.replace(
        ctx, parent=parent, category=await _category_of(ctx, parent) or category,
        # Nearer ancestors that have not arrived yet: the post moves under one of them if it comes.
        candidates=candidates[: candidates.index(choice.matched_id)] if choice.matched_id in candidates else (),
    ))
