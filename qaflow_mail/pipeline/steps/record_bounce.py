"""Mail to our VERP address bounces+<token>@domain: a delivery failure of something we sent to one user.

The token names the user (and the post or outbox row the failed message belonged to), so the report's own
recipient list only decides hard or soft: mail forwarded elsewhere bounces with the forwarding target's address.
A hard bounce raises the user's bounce score (over [limits] bounce_score_threshold their delivery stops); a
soft one is recorded and scores [limits] soft_bounce_score (0 by default). Nothing here is ever answered: a
bad token or something that is not a bounce is discarded with 250.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from qaflow_mail.db.models import Outbox, User
from qaflow_mail.mail.addresses import Bounce
from qaflow_mail.mail.automatic import auto_reply_reason
from qaflow_mail.mail.bounces import BounceReport, find_bounce, is_bounce_subject, is_daemon_sender
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.tokens import TokenKind
from qaflow_mail.outbound.bounce_score import record_delivery_failure
from qaflow_mail.pipeline import Context, Outcome, accepted, discarded
from qaflow_mail.pipeline.tokens import verify_token

log = logging.getLogger(__name__)

# Delay reports come within days, failures after retries of up to five days; a month leaves room for slow MTAs
# while an old token cannot be replayed to score a user indefinitely.
BOUNCE_TOKEN_MAX_AGE_DAYS = 30

# Evidence (mail.bounces.find_bounce) that only a mail system produces.
_STRUCTURAL_EVIDENCE = ("delivery-status report", "X-Failed-Recipients header")


def read_verp_bounce(parsed: ParsedMail, raw: bytes, *, null_sender: bool) -> BounceReport | None:
    """The report of a bounce that arrived on our VERP address, or None when it is not a bounce.

    RFC 3834 sends auto-replies to the envelope sender, so vacation notices land on the VERP address too. A
    delivery-status report, X-Failed-Recipients, a mail-system sender or a bounce subject make it a bounce;
    without any of those, a message with the signs of an auto-reply is one, even when flufl.bounce's
    heuristics find an address in its text.
    """
    finding = find_bounce(raw, null_sender=null_sender, to_bounce_address=True)
    if finding is None:
        return None
    if finding.evidence.startswith(_STRUCTURAL_EVIDENCE):
        return finding.report
    bounce_like = is_daemon_sender(parsed.header("From") or "") or is_bounce_subject(parsed.subject)
    if not bounce_like and auto_reply_reason(parsed) is not None:
        return None
    return finding.report


def failed_address(report: BounceReport, user_email: str) -> str:
    """The address to record: the user's own when the report names it, else the one the report names first."""
    own = user_email.lower()
    if own in report.addresses:
        return own
    ranked = sorted(report.permanent) or sorted(report.temporary)
    return ranked[0] if ranked else own


async def _outbox_id(ctx: Context, user_id: int, ref_id: int) -> int | None:
    """The outbox row the bounce belongs to: tokens carry a post id (notifications) or an outbox id."""
    if ref_id <= 0:
        return None
    by_post = await ctx.session.scalar(
        select(Outbox.id).where(Outbox.user_id == user_id, Outbox.post_id == ref_id).order_by(Outbox.id.desc()).limit(1)
    )
    if by_post is not None:
        return int(by_post)
    by_id = await ctx.session.scalar(select(Outbox.id).where(Outbox.id == ref_id, Outbox.user_id == user_id))
    return None if by_id is None else int(by_id)


async def record_bounce(ctx: Context) -> Context | Outcome:
    destination = ctx.destination
    if not isinstance(destination, Bounce):
        raise TypeError(f"record_bounce cannot handle {destination!r}")
    settings = ctx.deps.settings
    ids = verify_token(destination.token, TokenKind.BOUNCE, settings=settings, today=ctx.now.date(),
                       max_age_days=BOUNCE_TOKEN_MAX_AGE_DAYS)
    if ids is None:
        return discarded("bounce: invalid or expired token")
    user_id, ref_id = ids[0], ids[1]
    user = await ctx.session.get(User, user_id)
    if user is None:
        return discarded(f"bounce: no user {user_id}")
    report = read_verp_bounce(ctx.parsed, ctx.raw, null_sender=ctx.envelope_from.strip() in {"", "<>"})
    if report is None:
        return discarded(f"bounce address: not a bounce (user {user_id})")
    # Without a permanent status we cannot tell a dead mailbox from a full one: count it, do not score it.
    hard = bool(report.permanent)
    await record_delivery_failure(
        ctx.session,
        user_id=user.id,
        address=failed_address(report, user.email),
        outbox_id=await _outbox_id(ctx, user.id, ref_id),
        diagnostic=report.diagnostic,
        hard=hard,
        settings=settings,
        now=ctx.now,
    )
    kind = "hard" if hard else "soft"
    log.info("bounce.inbound user_id=%s kind=%s message_id=%s", user.id, kind, ctx.parsed.message_id)
    return accepted(reason=f"bounce: {kind} for user {user.id}")
