"""A bounce on our VERP address bounces+<token>@domain: a delivery failure of something we sent to one user.

The token names the user (and the post or outbox row the failed message belonged to), so the report's own
recipient list only decides hard or soft: mail forwarded elsewhere bounces with the forwarding target's address.
A hard bounce raises the user's bounce score (over [limits] bounce_score_threshold their delivery stops); a
soft one is recorded and scores [limits] soft_bounce_score (0 by default). Nothing here is ever answered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.models import Outbox, User
from qaflow_mail.mail.automatic import read_verp_bounce
from qaflow_mail.mail.bounces import failed_address
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.tokens import TokenKind, verified_ids
from qaflow_mail.outbound.bounce_score import record_delivery_failure

log = logging.getLogger(__name__)

# Delay reports come within days, failures after retries of up to five days; a month leaves room for slow MTAs
# while an old token cannot be replayed to score a user indefinitely.
BOUNCE_TOKEN_MAX_AGE_DAYS = 30


@dataclass(frozen=True, slots=True)
class BounceResult:
    recorded: bool
    reason: str


async def _outbox_id(session: AsyncSession, user_id: int, ref_id: int) -> int | None:
    """The outbox row the bounce belongs to: tokens carry a post id (notifications) or an outbox id."""
    if ref_id <= 0:
        return None
    by_post = await session.scalar(
        select(Outbox.id).where(Outbox.user_id == user_id, Outbox.post_id == ref_id).order_by(Outbox.id.desc()).limit(1)
    )
    if by_post is not None:
        return int(by_post)
    by_id = await session.scalar(select(Outbox.id).where(Outbox.id == ref_id, Outbox.user_id == user_id))
    return None if by_id is None else int(by_id)


async def record_verp_bounce(
    session: AsyncSession, settings: Settings, *, token: str, parsed: ParsedMail, raw: bytes, null_sender: bool,
    now: datetime,
) -> BounceResult:
    ids = verified_ids(token, TokenKind.BOUNCE, secrets=settings.tokens.secrets, today=now.date(),
                       max_age_days=BOUNCE_TOKEN_MAX_AGE_DAYS)
    if ids is None:
        return BounceResult(False, "bounce: invalid or expired token")
    user_id, ref_id = ids[0], ids[1]
    user = await session.get(User, user_id)
    if user is None:
        return BounceResult(False, f"bounce: no user {user_id}")
    report = read_verp_bounce(parsed, raw, null_sender=null_sender)
    if report is None:
        return BounceResult(False, f"bounce address: not a bounce (user {user_id})")
    # Without a permanent status we cannot tell a dead mailbox from a full one: count it, do not score it.
    hard = bool(report.permanent)
    await record_delivery_failure(
        session, user_id=user.id, address=failed_address(report, user.email),
        outbox_id=await _outbox_id(session, user.id, ref_id), diagnostic=report.diagnostic, hard=hard,
        settings=settings, now=now,
    )
    kind = "hard" if hard else "soft"
    log.info("bounce.inbound user_id=%s kind=%s message_id=%s", user.id, kind, parsed.message_id)
    return BounceResult(True, f"bounce: {kind} for user {user.id}")
