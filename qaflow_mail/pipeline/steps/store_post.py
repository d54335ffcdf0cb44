"""Create the topic (for a new thread) and the post; re-attach orphans that were waiting for this message."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from qaflow_mail.db import queries
from qaflow_mail.db.models import IMPORT_SOURCE, Attachment, PendingReference, Post, Topic
from qaflow_mail.mail.attachments import safe_filename
from qaflow_mail.pipeline import Context, Outcome


def written_at(ctx: Context) -> datetime:
    """When the post was written: now for live mail; for an archive import, the message's own Date if sane."""
    if ctx.source != IMPORT_SOURCE or not ctx.parsed.date:
        return ctx.now
    try:
        dated = parsedate_to_datetime(ctx.parsed.date)
    except (TypeError, ValueError, IndexError):
        return ctx.now
    if dated.tzinfo is None:
        dated = dated.replace(tzinfo=UTC)
    return ctx.now if dated > ctx.now or dated.year < 1980 else dated.astimezone(UTC)


async def store_post(ctx: Context) -> Context | Outcome:
    assert ctx.author is not None and ctx.category is not None and ctx.content is not None
    parsed = ctx.parsed
    when = written_at(ctx)
    subject = parsed.subject.strip() or "(no subject)"
    if ctx.parent is None:
        topic = await queries.create_topic(
            ctx.session, category_id=ctx.category.id, author_id=ctx.author.id, subject=subject, now=when
        )
        topic_id = topic.id
    else:
        topic_id = ctx.parent.topic_id
        parent_topic = await ctx.session.get(Topic, topic_id)
        assert parent_topic is not None
        parent_topic.last_post_at = max(parent_topic.last_post_at, when)
    post = Post(
        topic_id=topic_id,
        author_id=ctx.author.id,
        parent_id=None if ctx.parent is None else ctx.parent.id,
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to[0] if parsed.in_reply_to else None,
        subject=subject,
        body_text=ctx.content.text,
        body_html=ctx.content.html,
        source=ctx.source,
        created_at=when,
    )
    ctx.session.add(post)
    await ctx.session.flush()
    if ctx.candidates:
        ctx.session.add_all(
            PendingReference(post_id=post.id, message_id=mid, position=i) for i, mid in enumerate(ctx.candidates)
        )
    for att in parsed.attachments:
        ctx.session.add(
            Attachment(post_id=post.id, filename=safe_filename(att.filename), content_type=att.content_type,
                       size=att.size, content_id=att.content_id, inline=att.inline, content=att.content)
        )
    await queries.reattach_orphans(ctx.session, parent=post)
    return dataclasses.replace(ctx, extra={**ctx.extra, "post": post})
