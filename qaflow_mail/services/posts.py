"""Storing a post: its topic (for a new thread), the post, its attachments, and the orphans it adopts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import LimitsSettings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Attachment, Category, PendingReference, Post, Source, Topic, User
from qaflow_mail.mail.attachments import check_attachment, safe_filename
from qaflow_mail.mail.content import Content
from qaflow_mail.mail.parse import Attachment as MailAttachment
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.replies import ATTACHMENT_REFUSED, ATTACHMENT_TOO_BIG, TOO_MANY_ATTACHMENTS, Refusal

NO_SUBJECT = "(no subject)"


def attachment_refusal(attachments: Sequence[MailAttachment], limits: LimitsSettings) -> Refusal | None:
    """Why the attachments cannot be kept (too many, too large, a type we refuse), or None."""
    if len(attachments) > limits.max_attachments:
        text = f"Too many attachments: at most {limits.max_attachments} per message"
        return Refusal(TOO_MANY_ATTACHMENTS.with_text(text), text)
    for att in attachments:
        if att.size > limits.max_attachment_size:
            text = f"Attachment too large: at most {limits.max_attachment_size} bytes each"
            return Refusal(ATTACHMENT_TOO_BIG.with_text(text), text)
        # Judge the name that will be stored: invisible characters hidden in the original can mask an extension.
        reason = check_attachment(dataclasses.replace(att, filename=safe_filename(att.filename)), allowed_types=None)
        if reason:
            text = f"Attachment refused: {reason}"
            return Refusal(ATTACHMENT_REFUSED.with_text(text), text)
    return None


def dated(date_header: str | None, *, now: datetime) -> datetime:
    """When an archived message was written: its own Date when sane, else now."""
    if not date_header:
        return now
    try:
        when = parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return now
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return now if when > now or when.year < 1980 else when.astimezone(UTC)


async def store_post(
    session: AsyncSession, *, author: User, category: Category, parent: Post | None, parsed: ParsedMail,
    content: Content, source: Source, written_at: datetime, waiting_for: Sequence[str] = (),
) -> Post:
    """Create the topic (when `parent` is None) and the post; `waiting_for` names ancestors that have not arrived
    (the post moves under one of them when it does). Posts that were waiting for this one are placed under it."""
    subject = parsed.subject.strip() or NO_SUBJECT
    if parent is None:
        topic = await queries.create_topic(session, category_id=category.id, author_id=author.id, subject=subject,
                                           now=written_at)
        topic_id = topic.id
    else:
        topic_id = parent.topic_id
        parent_topic = await session.get(Topic, topic_id)
        assert parent_topic is not None
        parent_topic.last_post_at = max(parent_topic.last_post_at, written_at)
    post = Post(
        topic_id=topic_id,
        author_id=author.id,
        parent_id=None if parent is None else parent.id,
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to[0] if parsed.in_reply_to else None,
        subject=subject,
        body_text=content.text,
        body_html=content.html,
        source=source.value,
        created_at=written_at,
    )
    session.add(post)
    await session.flush()
    session.add_all(PendingReference(post_id=post.id, message_id=mid, position=i) for i, mid in enumerate(waiting_for))
    for att in parsed.attachments:
        session.add(
            Attachment(post_id=post.id, filename=safe_filename(att.filename), content_type=att.content_type,
                       size=att.size, content_id=att.content_id, inline=att.inline, content=att.content)
        )
    await queries.reattach_orphans(session, parent=post)
    return post
