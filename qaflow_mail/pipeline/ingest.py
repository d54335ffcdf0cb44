"""The single entry point for inbound mail, whichever listener received it (SMTP, LMTP, IMAP, import).

One transaction per message: every destination's steps run in it, the inbound record is written in it, and it
commits before the caller may answer 250.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from qaflow_mail.db.models import Disposition, InboundMessage
from qaflow_mail.errors import OK, UNKNOWN_RECIPIENT, SmtpReply
from qaflow_mail.mail.addresses import Announce, Reply, classify
from qaflow_mail.mail.parse import ParsedMail, parse_message
from qaflow_mail.pipeline import Context, Outcome, rejected, run
from qaflow_mail.pipeline.deps import Deps
from qaflow_mail.pipeline.notices import notify_refusal
from qaflow_mail.pipeline.routes import POST_DESTINATIONS, has_route, steps_for

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class IngestResult:
    outcomes: dict[str, Outcome]  # per recipient, for LMTP's per-recipient replies
    reply: SmtpReply  # the single SMTP reply for the whole transaction
    message_id: str


def combine(outcomes: Sequence[Outcome]) -> SmtpReply:
    """All taken → 250; all refused → the first refusal; a mix → 250 (the failures are logged and recorded)."""
    refusals = [o for o in outcomes if not o.accepted]
    if refusals and len(refusals) == len(outcomes):
        return refusals[0].reply
    return OK


async def parse(raw: bytes) -> ParsedMail:
    """Parsing is CPU work on untrusted input: off the event loop, so one message never stalls the others."""
    return await asyncio.to_thread(parse_message, raw)


def _is_post_destination(destination: object) -> bool:
    return isinstance(destination, POST_DESTINATIONS)


async def _process(
    deps: Deps, raw: bytes, parsed: ParsedMail, envelope_from: str, recipients: Sequence[str], source: str
) -> dict[str, Outcome]:
    settings = deps.settings
    now = deps.clock()
    outcomes: dict[str, Outcome] = {}
    async with deps.sessions() as session, session.begin():
        slugs = await deps.categories.slugs()
        routed = [(rcpt, classify(rcpt, domain=settings.site.domain, category_slugs=slugs,
                                  announce_local=settings.announce.address)) for rcpt in recipients]
        # One message makes at most one post: a reply token is tried first, then an announcement, then the
        # categories in the order given; the first that takes the message makes the post, and every later post
        # address shares its outcome. A refusal (e.g. a stranger in a members-only category) moves on to the next.
        post_targets = sorted(
            (r for r in routed if _is_post_destination(r[1])),
            key=lambda r: 0 if isinstance(r[1], Reply) else 1 if isinstance(r[1], Announce) else 2,
        )
        post_id: int | None = None

        async def route(rcpt: str, destination: object) -> Outcome:
            ctx = Context(deps=deps, session=session, raw=raw, parsed=parsed, envelope_from=envelope_from,
                          recipient=rcpt, destination=destination, source=source, now=now)
            return await run(steps_for(destination), ctx)

        taken: Outcome | None = None
        for rcpt, destination in post_targets:
            outcomes[rcpt] = taken if taken is not None else await route(rcpt, destination)
            if taken is None and outcomes[rcpt].accepted:
                taken = outcomes[rcpt]
                post_id = taken.post_id
        for rcpt, destination in routed:
            if destination is None or not has_route(destination):
                outcomes[rcpt] = rejected(UNKNOWN_RECIPIENT, f"unknown recipient {rcpt}", notify_sender=False)
            elif not _is_post_destination(destination):
                outcomes[rcpt] = await route(rcpt, destination)
        await notify_refusal(session, settings=settings, parsed=parsed, raw=raw, outcomes=list(outcomes.values()),
                             envelope_from=envelope_from, source=source, now=now)
        session.add(_record(raw, parsed, envelope_from, recipients, source, now, outcomes, post_id))
    return outcomes


def _record(
    raw: bytes, parsed: ParsedMail, envelope_from: str, recipients: Sequence[str], source: str, now: object,
    outcomes: dict[str, Outcome], post_id: int | None,
) -> InboundMessage:
    values = list(outcomes.values())
    if any(o.disposition == Disposition.ACCEPTED for o in values):
        disposition = Disposition.ACCEPTED
    elif any(o.disposition == Disposition.HELD for o in values):
        disposition = Disposition.HELD
    elif any(o.disposition == Disposition.DISCARDED for o in values):
        disposition = Disposition.DISCARDED
    else:
        disposition = Disposition.REJECTED
    reason = "; ".join(f"{rcpt}: {o.disposition} {o.reason}".strip() for rcpt, o in outcomes.items())
    if not outcomes:
        reason = "no recipient on our domain"
    return InboundMessage(
        message_id=parsed.message_id, sha256=parsed.sha256, envelope_from=envelope_from,
        recipients=json.dumps(list(recipients)), from_address=parsed.from_address, source=source,
        received_at=now, disposition=disposition, reason=reason[:4000], post_id=post_id, raw=raw,
    )


async def ingest(
    raw: bytes, *, envelope_from: str, recipients: Sequence[str], source: str, deps: Deps
) -> IngestResult:
    """Run one message through the pipeline and commit. Raises on a failure the sender must retry (→ 4xx)."""
    started = time.perf_counter()
    parsed = await parse(raw)
    try:
        outcomes = await _process(deps, raw, parsed, envelope_from, recipients, source)
    except IntegrityError:
        # A concurrent delivery of the same message won the race; running again finds it a duplicate.
        log.info("inbound.retry_after_conflict message_id=%s", parsed.message_id)
        outcomes = await _process(deps, raw, parsed, envelope_from, recipients, source)
    deps.outbox_wakeup()
    reply = combine(list(outcomes.values()))
    log.info(
        "inbound.%s message_id=%s from=%s rcpts=%d post_id=%s ms=%.1f",
        "accepted" if reply.is_success else "rejected", parsed.message_id, parsed.from_address, len(recipients),
        next((o.post_id for o in outcomes.values() if o.post_id), None), (time.perf_counter() - started) * 1000,
    )
    return IngestResult(outcomes=outcomes, reply=reply, message_id=parsed.message_id)


