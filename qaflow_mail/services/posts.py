"""Storing a post: its topic (for a new thread), the post, its attachments, and the orphans it adopts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import LimitsSettings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Attachment, Category, PendingReference, Post, Source, Topic, User
from qaflow_mail.mail.attachments import check_attachment, executable_reason, safe_filename
from qaflow_mail.mail.charsets import storable, storable_line
from qaflow_mail.mail.content import Content
from qaflow_mail.mail.parse import Attachment as MailAttachment
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.threads import parent_candidates, shared_missing_ancestor
from qaflow_mail.replies import ATTACHMENT_REFUSED, ATTACHMENT_TOO_BIG, TOO_MANY_ATTACHMENTS, Refusal

NO_SUBJECT = "(no subject)"


def attachment_refusal(attachments: Sequence[MailAttachment], limits: LimitsSettings) -> Refusal | None:
    """Why the message cannot be taken for its attachments (too many, too large, a program), or None. Any other
    attachment we do not keep (a type we refuse, content that is not its declared type) is dropped instead, see
    `unkept_attachments`."""
    if len(attachments) > limits.max_attachments:
        text = f"Too many attachments: at most {limits.max_attachments} per message"
        return Refusal(TOO_MANY_ATTACHMENTS.with_text(text), text)
    for att in attachments:
        if att.size > limits.max_attachment_size:
            text = f"Attachment too large: at most {limits.max_attachment_size} bytes each"
            return Refusal(ATTACHMENT_TOO_BIG.with_text(text), text)
        # Judge the name that will be stored: invisible characters hidden in the original can mask an extension.
        reason = executable_reason(dataclasses.replace(att, filename=safe_filename(att.filename)))
        if reason:
            text = f"Attachment refused: {reason}"
            return Refusal(ATTACHMENT_REFUSED.with_text(text), text)
    return None


def unkept_attachments(attachments: Sequence[MailAttachment]) -> list[tuple[MailAttachment, str]]:
    """The attachments a post does not keep, each with the reason; the message's text is posted without them."""
    unkept = []
    for att in attachments:
        reason = check_attachment(dataclasses.replace(att, filename=safe_filename(att.filename)), allowed_types=None)
        if reason:
            unkept.append((att, reason))
    return unkept


# Column lengths (db.models): values are cut to them, on every backend, before they reach the database.
_ID_CHARS = 255
_CONTENT_TYPE_CHARS = 127
_FILENAME_CHARS = 255


def column_text(value: str) -> str:
    """A body as a text column holds it: without NUL and lone surrogates (PostgreSQL refuses both)."""
    return storable(value)


def column_line(value: str, limit: int | None = None) -> str:
    """A one-line value (subject, file name, id, type) without control characters, cut to `limit`."""
    clean = storable_line(value).strip()
    return clean if limit is None else clean[:limit]


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
    known_ancestors: Mapping[str, int] | None = None,
) -> Post:
    """Create the topic (when `parent` is None and no post of the category waits for one of the same missing
    ancestors, whose topic it joins) and the post; `waiting_for` names ancestors that have not arrived (the post
    moves under one of them when it does). Posts that were waiting for this one are placed under it.
    `known_ancestors` is the lookup of the headers' ancestors the placement made, when it made one."""
    subject = column_line(parsed.subject) or NO_SUBJECT
    waiting = {} if parent is not None else await queries.topics_waiting_for(session, waiting_for,
                                                                             category_id=category.id)
    shared = shared_missing_ancestor(waiting_for, waiting)
    # under its parent, or (its parent missing) in the topic of the replies that wait for the same parent
    topic_id = parent.topic_id if parent is not None else None if shared is None else shared[1]
    if topic_id is None:
        topic = await queries.create_topic(session, category_id=category.id, author_id=author.id, subject=subject,
                                           now=written_at)
        topic_id = topic.id
    else:
        parent_topic = await session.get(Topic, topic_id)
        assert parent_topic is not None
        parent_topic.last_post_at = max(parent_topic.last_post_at, written_at)
    post = Post(
        topic_id=topic_id,
        author_id=author.id,
        parent_id=None if parent is None else parent.id,
        message_id=column_line(parsed.message_id, _ID_CHARS),
        in_reply_to=column_line(parsed.in_reply_to[0], _ID_CHARS) if parsed.in_reply_to else None,
        subject=subject,
        body_text=column_text(content.text),
        body_html=None if content.html is None else column_text(content.html),
        source=source.value,
        created_at=written_at,
    )
    session.add(post)
    await session.flush()
    session.add_all(PendingReference(post_id=post.id, message_id=column_line(mid, _ID_CHARS), position=i)
                    for i, mid in enumerate(waiting_for))
    # Missing ancestors beyond the parent are remembered too (negative positions): a later reply naming only one
    # of them then joins this topic.
    farther = [mid for mid in parent_candidates(message_id=parsed.message_id, in_reply_to=parsed.in_reply_to,
                                                references=parsed.references) if mid not in waiting_for]
    known = known_ancestors
    if known is None:
        known = await queries.posts_by_message_ids(session, farther) if farther else {}
    session.add_all(PendingReference(post_id=post.id, message_id=column_line(mid, _ID_CHARS), position=-1 - i)
                    for i, mid in enumerate(mid for mid in farther if mid not in known))
    for att in parsed.attachments:
        session.add(
            Attachment(post_id=post.id, filename=column_line(safe_filename(att.filename), _FILENAME_CHARS),
                       content_type=column_line(att.content_type, _CONTENT_TYPE_CHARS), size=att.size,
                       content_id=None if att.content_id is None else column_line(att.content_id, _ID_CHARS) or None,
                       inline=att.inline, content=att.content)
        )
    await queries.reattach_orphans(session, parent=post)
    return post
