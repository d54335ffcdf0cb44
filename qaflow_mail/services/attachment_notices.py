"""Attachments a post leaves out (a type we do not keep, content that is not its declared type): the text is
posted without them and the sender is told which were left out and why, in the same transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import Outbox, OutboxKind
from qaflow_mail.deps import Deps
from qaflow_mail.mail.attachments import safe_filename
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.mail.parse import Attachment, ParsedMail
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import MailTemplate
from qaflow_mail.outbound.site_notice import site_notice, user_bounce_address
from qaflow_mail.services.notices import SUBJECT_CHARS, withhold_reason
from qaflow_mail.services.posts import unkept_attachments

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Screened:
    kept: tuple[Attachment, ...]
    dropped: tuple[tuple[Attachment, str], ...]  # each with the reason
    notice_queued: bool = False


async def screen_attachments(
    session: AsyncSession, deps: Deps, *, parsed: ParsedMail, raw: bytes, envelope_from: str, now: datetime,
    tell_sender: bool = True,
) -> Screened:
    """Split the attachments into those a post keeps and those it leaves out; queue a notice for the latter
    (unless `tell_sender` is False: an archive's authors never sent anything to us)."""
    dropped = tuple(unkept_attachments(parsed.attachments))
    if not dropped:
        return Screened(kept=parsed.attachments, dropped=())
    left_out = {id(att) for att, _ in dropped}
    kept = tuple(att for att in parsed.attachments if id(att) not in left_out)
    queued = tell_sender and await _queue_notice(session, deps, parsed=parsed, raw=raw, dropped=dropped,
                                                 envelope_from=envelope_from, now=now)
    return Screened(kept=kept, dropped=dropped, notice_queued=queued)


async def _queue_notice(
    session: AsyncSession, deps: Deps, *, parsed: ParsedMail, raw: bytes,
    dropped: Sequence[tuple[Attachment, str]], envelope_from: str, now: datetime,
) -> bool:
    settings = deps.settings
    recipient = parsed.from_address
    user = await queries.user_by_email(session, recipient) if recipient else None
    withheld = withhold_reason(parsed, raw, envelope_from=envelope_from, settings=settings,
                               registered=user is not None)
    if withheld is not None:
        log.info("notice.attachments_withheld message_id=%s reason=%s", parsed.message_id, withheld)
        return False
    dedupe_key = f"attachments:{parsed.sha256}"
    if await session.scalar(select(Outbox.id).where(Outbox.dedupe_key == dedupe_key)) is not None:
        return False
    context = {
        "site": {"name": settings.site.name, "base_url": settings.site.base_url},
        "original_subject": " ".join(parsed.subject.split())[:SUBJECT_CHARS],
        "dropped": [{"filename": safe_filename(att.filename), "reason": reason} for att, reason in dropped],
    }
    message_id = make_message_id("attachments", parsed.sha256[:24], domain=settings.site.domain,
                                 salt=settings.site.message_id_salt)
    try:
        rendered = deps.renderer.render(MailTemplate.NOTICE_ATTACHMENTS_DROPPED, context)
        data = site_notice(settings, to=recipient, rendered=rendered, message_id=message_id,
                           in_reply_to=None if parsed.message_id_synthesized else parsed.message_id, now=now)
    except ValueError:  # an address compose refuses: the post stands, without the notice
        log.warning("notice.attachments_not_composed message_id=%s", parsed.message_id, exc_info=True)
        return False
    envelope = "" if user is None else user_bounce_address(settings, user.id, now=now)
    await enqueue(session, [OutgoingMessage(kind=OutboxKind.NOTICE, dedupe_key=dedupe_key, message_id=message_id,
                                            envelope_from=envelope, recipient=recipient, raw=data,
                                            user_id=None if user is None else user.id)], now=now)
    return True
