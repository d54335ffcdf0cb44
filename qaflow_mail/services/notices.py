"""Mail the site writes to one person in answer to their message: "your message was not posted" for a sender
who gets no SMTP reply, and "you are unsubscribed".

Who gets one:
- Only mail from sources without an SMTP conversation (IMAP). Over SMTP the sending MTA already turns our 5xx
  text into a bounce for its user, so a notice would say the same thing twice. Archive imports get none: their
  authors never sent anything to us, and the import summary tells the operator what was skipped.
- Only when the message as a whole was refused (no recipient took it) and the refusal has a notice
  (`SmtpReply.notice`, see qaflow_mail.replies).
- Never to automatic mail (RFC 3834): anything classify_automatic does not call a person's post (auto-replies,
  bounces, loops, a null envelope sender), and never to our own domain.
- Never to a sender we cannot trust to have written it (no backscatter to forged From addresses): when our MTA's
  Authentication-Results (the topmost one, with [announce] trusted_authserv_id) reports a failure and no aligned
  pass; when the From address differs from the envelope sender and nothing authenticates the From; and to an
  address that is not a registered user's unless that Authentication-Results authenticates the From (aligned
  dkim=pass or dmarc=pass). Spam with a forged stranger's From, polled over IMAP, thus gets no notice.
- At most [limits] notice_rate_per_hour per address (counted from outbox rows of kind "notice"), and one per
  message and address (the outbox dedupe key).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import ANNOUNCEMENTS_SLUG, Outbox, OutboxKind, Source
from qaflow_mail.mail.automatic import MailKind, classify_automatic
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.mail.content import extract_content
from qaflow_mail.mail.dkim_check import raw_headers, trusted_authentication_results
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.tokens import ANNOUNCEMENTS_CATEGORY_ID
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import MailTemplate, Renderer
from qaflow_mail.outbound.site_notice import site_notice, user_bounce_address
from qaflow_mail.replies import ADVICE, SmtpReply
from qaflow_mail.services.subscriptions import UnsubscribeResult
from qaflow_mail.urls import category_url, membership_address

log = logging.getLogger(__name__)

NOTICE_SOURCES = frozenset({Source.IMAP})
WINDOW = timedelta(hours=1)
QUOTED_LINES = 10
QUOTED_LINE_CHARS = 200
SUBJECT_CHARS = 200
_MAX_DEDUPE_KEY = 255  # outbox.dedupe_key is String(255)

def reason_and_advice(reply: SmtpReply, *, domain: str) -> tuple[str, str]:
    """The reply text split into what happened and what to do ("X; do Y"), with a default for the advice."""
    reason, _, advice = reply.text.partition(";")
    advice = advice.strip() or ADVICE.get(reply.enhanced, f"If this looks wrong, write to postmaster@{domain}.")
    advice = advice[:1].upper() + advice[1:]
    return reason.strip().rstrip("."), advice if advice.endswith((".", "!", "?")) else advice + "."


def quoted_lines(parsed: ParsedMail) -> list[str]:
    """The first lines of what they wrote (the untrimmed body), for the notice to quote."""
    try:
        text = extract_content(parsed).full_text
    except Exception:  # the notice must go out even if the body cannot be read
        log.warning("notice.unreadable_body message_id=%s", parsed.message_id, exc_info=True)
        return []
    lines = [line.rstrip()[:QUOTED_LINE_CHARS] for line in text.splitlines()[: QUOTED_LINES * 3]]
    while lines and not lines[-1]:
        lines.pop()
    return lines[:QUOTED_LINES]


def _bare_address(value: str) -> str:
    text = value.strip()
    if "<" in text and ">" in text:
        text = text[text.index("<") + 1 : text.rindex(">")]
    return text.strip().lower()


def withhold_reason(
    parsed: ParsedMail, raw: bytes, *, envelope_from: str, settings: Settings, registered: bool = False
) -> str | None:
    """Why this sender must not get a notice, or None when it may. `registered`: the From address is a user's."""
    address = parsed.from_address
    if not address:
        return "no From address"
    domain = settings.site.domain.lower().rstrip(".")
    if address.rpartition("@")[2].rstrip(".") == domain:
        return "our own address"
    verdict = classify_automatic(
        parsed, raw, envelope_from=envelope_from, our_domain=settings.site.domain,
        our_list_id_suffix=f".{settings.site.domain}", max_received=settings.limits.max_received_headers,
        is_bounce_address=False, our_message_id_salt=settings.site.message_id_salt,
    )
    if verdict.kind is not MailKind.POST:
        return f"automatic mail ({verdict.kind}: {verdict.reason})"
    trusted = trusted_authentication_results(raw_headers(raw), authserv_id=settings.announce.trusted_authserv_id,
                                             from_domain=address.rpartition("@")[2])
    if trusted.failed and not trusted.passed:
        return "the sender failed authentication"
    if not trusted.passed and _bare_address(envelope_from) != address:
        return "From differs from the envelope sender and is not authenticated"
    if not trusted.passed and not registered:
        return "not a registered user, and the From is not authenticated"
    return None


async def _recent_notices(session: AsyncSession, recipient: str, now: datetime) -> int:
    count = await session.scalar(
        select(func.count(Outbox.id)).where(
            Outbox.kind == OutboxKind.NOTICE.value,
            Outbox.recipient == recipient,
            Outbox.created_at > now - WINDOW,
        )
    )
    return int(count or 0)


def _dedupe_key(sha256: str, recipient: str) -> str:
    key = f"notice:{sha256}:{recipient}"
    if len(key) <= _MAX_DEDUPE_KEY:
        return key
    return f"notice:{sha256}:{hashlib.sha256(recipient.encode()).hexdigest()}"


def _context(settings: Settings, parsed: ParsedMail, reply: SmtpReply) -> dict[str, Any]:
    reason, advice = reason_and_advice(reply, domain=settings.site.domain)
    return {
        "site": {"name": settings.site.name, "base_url": settings.site.base_url},
        "reason": reason,
        "advice": advice,
        "reason_code": reply.enhanced,
        "original_subject": " ".join(parsed.subject.split())[:SUBJECT_CHARS],
        "quoted_lines": quoted_lines(parsed),
    }


async def queue_rejection_notice(
    session: AsyncSession,
    *,
    settings: Settings,
    renderer: Renderer,
    parsed: ParsedMail,
    raw: bytes,
    reply: SmtpReply,
    envelope_from: str,
    now: datetime,
) -> bool:
    """Queue the notice for one refused message in the caller's transaction. True when a notice was queued."""
    recipient = parsed.from_address
    user = await queries.user_by_email(session, recipient) if recipient else None
    withheld = withhold_reason(parsed, raw, envelope_from=envelope_from, settings=settings,
                               registered=user is not None)
    if withheld is not None:
        log.info("notice.withheld message_id=%s reason=%s", parsed.message_id, withheld)
        return False
    dedupe_key = _dedupe_key(parsed.sha256, recipient)
    if await session.scalar(select(Outbox.id).where(Outbox.dedupe_key == dedupe_key)) is not None:
        return False
    limit = settings.limits.notice_rate_per_hour
    if await _recent_notices(session, recipient, now) >= limit:
        log.info("notice.rate_limited message_id=%s to=%s limit=%d", parsed.message_id, recipient, limit)
        return False
    domain = settings.site.domain
    message_id = make_message_id("notice", hashlib.sha256(dedupe_key.encode()).hexdigest()[:24], domain=domain,
                                 salt=settings.site.message_id_salt)
    original = None if parsed.message_id_synthesized else parsed.message_id
    try:
        rendered = renderer.render(reply.notice or MailTemplate.NOTICE_REJECTED, _context(settings, parsed, reply))
        data = site_notice(settings, to=recipient, rendered=rendered, message_id=message_id, in_reply_to=original,
                           now=now)
    except ValueError:  # an address or header compose refuses: no notice, but the message is still handled
        log.warning("notice.not_composed message_id=%s", parsed.message_id, exc_info=True)
        return False
    # A known user's notice bounces to VERP like any mail to them; a stranger's uses the null reverse-path.
    envelope = "" if user is None else user_bounce_address(settings, user.id, now=now)
    await enqueue(
        session,
        [OutgoingMessage(kind=OutboxKind.NOTICE, dedupe_key=dedupe_key, message_id=message_id,
                         envelope_from=envelope, recipient=recipient, raw=data,
                         user_id=None if user is None else user.id)],
        now=now,
    )
    log.info("notice.queued message_id=%s to=%s reason=%s", parsed.message_id, recipient, reply.enhanced)
    return True


def answers_by_mail(source: Source) -> bool:
    """Whether a refusal of mail from this source is told by mail (no SMTP reply reaches its sender)."""
    return source in NOTICE_SOURCES


def _resubscribe_address(settings: Settings, result: UnsubscribeResult) -> str | None:
    """The -request@ address whose "subscribe" undoes this unsubscribe: the category's, the announcements'; None
    for a whole digest, which no one address restores."""
    if result.digest_mode is not None:
        return None
    return membership_address(settings, result.category_slug or ANNOUNCEMENTS_SLUG, "request")


def unsubscribed_notice(
    settings: Settings, renderer: Renderer, result: UnsubscribeResult, *, now: datetime, in_reply_to: str | None
) -> OutgoingMessage:
    """The "you are unsubscribed" email, to the subscriber's registered address (never the sender of the request,
    who could be anyone holding the token). At most one per subscription and day: its dedupe key says so."""
    assert result.user_id is not None and result.email is not None
    domain = settings.site.domain
    target = (
        result.category_slug if result.digest_mode is not None
        else result.category_id if result.category_id is not None else ANNOUNCEMENTS_CATEGORY_ID
    )
    category = (
        None if result.category_slug is None else {"name": result.category_name, "slug": result.category_slug}
    )
    rendered = renderer.render(
        MailTemplate.NOTICE_UNSUBSCRIBED,
        {
            "site": {"name": settings.site.name, "base_url": settings.site.base_url},
            "category": category,
            "resubscribe_url": settings.site.base_url
            if result.category_slug is None or result.digest_mode is not None or result.category_private
            else category_url(settings, result.category_slug),
            "request_address": _resubscribe_address(settings, result),
        },
    )
    day = now.strftime("%Y%m%d")
    message_id = make_message_id("unsubscribed", f"{result.user_id}.{target}.{day}", domain=domain,
                                 salt=settings.site.message_id_salt)
    raw = site_notice(settings, to=result.email, rendered=rendered, message_id=message_id, in_reply_to=in_reply_to,
                      now=now)
    return OutgoingMessage(
        kind=OutboxKind.NOTICE,
        dedupe_key=f"unsubscribed:{result.user_id}:{target}:{day}",
        message_id=message_id,
        envelope_from=user_bounce_address(settings, result.user_id, now=now),
        recipient=result.email,
        raw=raw,
        user_id=result.user_id,
    )
