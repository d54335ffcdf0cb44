"""Bounce bookkeeping shared by outbound refusals (a 5xx from our relay) and inbound DSNs.

Each failure writes one `bounces` row and raises the user's bounce score; a user whose score reaches
[limits] bounce_score_threshold gets status "bouncing" (a disabled user stays disabled).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.models import BounceRecord, User, UserAddress, UserStatus

log = logging.getLogger(__name__)

BOUNCE_KIND_HARD = "hard"
BOUNCE_KIND_SOFT = "soft"
# Only these statuses turn into "bouncing"; a disabled user keeps its status.
_CAN_START_BOUNCING = (UserStatus.ACTIVE.value, UserStatus.STAGED.value)


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    address: str
    user_id: int | None
    outbox_id: int | None
    diagnostic: str
    hard: bool


async def _user_ids_by_address(session: AsyncSession, addresses: set[str]) -> dict[str, int]:
    if not addresses:
        return {}
    found: dict[str, int] = {}
    primary = await session.execute(select(User.email, User.id).where(User.email.in_(addresses)))
    found.update({email: user_id for email, user_id in primary})
    rest = addresses - found.keys()
    if rest:
        extra = await session.execute(
            select(UserAddress.email, UserAddress.user_id).where(UserAddress.email.in_(rest))
        )
        found.update({email: user_id for email, user_id in extra})
    return found


async def record_delivery_failures(
    session: AsyncSession, failures: Sequence[DeliveryFailure], *, settings: Settings, now: datetime
) -> None:
    """Record a batch of failures in a few statements, inside the caller's transaction."""
    if not failures:
        return
    limits = settings.limits
    unknown = {f.address.strip().lower() for f in failures if f.user_id is None}
    by_address = await _user_ids_by_address(session, unknown)
    rows: list[dict[str, Any]] = []
    increments: dict[int, float] = {}
    for failure in failures:
        user_id = failure.user_id if failure.user_id is not None else by_address.get(failure.address.strip().lower())
        rows.append({
            "user_id": user_id,
            "address": failure.address,
            "outbox_id": failure.outbox_id,
            "kind": BOUNCE_KIND_HARD if failure.hard else BOUNCE_KIND_SOFT,
            "diagnostic": failure.diagnostic,
            "received_at": now,
        })
        score = limits.hard_bounce_score if failure.hard else limits.soft_bounce_score
        if user_id is not None and score:
            increments[user_id] = increments.get(user_id, 0.0) + score
    await session.execute(insert(BounceRecord), rows)
    if not increments:
        return
    users = cast(Table, User.__table__)
    new_score = users.c.bounce_score + bindparam("inc")
    stmt = (
        update(users)
        .where(users.c.id == bindparam("uid"))
        .values(
            bounce_score=new_score,
            # SET expressions read the row's values from before the update, on every backend.
            status=case(
                (
                    # OR rather than IN: an expanding IN cannot run as executemany.
                    or_(*(users.c.status == status for status in _CAN_START_BOUNCING))
                    & (new_score >= limits.bounce_score_threshold),
                    UserStatus.BOUNCING.value,
                ),
                else_=users.c.status,
            ),
        )
    )
    await session.execute(stmt, [{"uid": uid, "inc": inc} for uid, inc in increments.items()])
    log.info("bounce.recorded failures=%d users=%d", len(failures), len(increments))


async def record_delivery_failure(
    session: AsyncSession,
    *,
    user_id: int | None,
    address: str,
    outbox_id: int | None,
    diagnostic: str,
    hard: bool,
    settings: Settings,
    now: datetime,
) -> None:
    """Record one failure: a `bounces` row, the score, and the "bouncing" status once over the threshold."""
    failure = DeliveryFailure(address=address, user_id=user_id, outbox_id=outbox_id, diagnostic=diagnostic,
                              hard=hard)
    await record_delivery_failures(session, [failure], settings=settings, now=now)

