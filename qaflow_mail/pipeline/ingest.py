"""The single entry point for inbound mail, whichever listener received it (SMTP, LMTP, IMAP, import).

One transaction per message: every destination's steps run in it, the inbound record is written in it, and it
commits before the caller may answer 250.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.group_commit import group_commit
from qaflow_mail.db.models import Disposition, InboundMessage, Source
from qaflow_mail.deps import Deps
from qaflow_mail.mail.addresses import Destination, classify
from qaflow_mail.mail.content import Content
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.untrusted import header_block_size
from qaflow_mail.pipeline import Context, Outcome, rejected, run, shunted
from qaflow_mail.pipeline.body import read_body
from qaflow_mail.pipeline.cpu import InputRefused, parse_untrusted
from qaflow_mail.pipeline.routes import POST_DESTINATIONS, has_route, steps_for
from qaflow_mail.replies import OK, UNKNOWN_RECIPIENT, SmtpReply
from qaflow_mail.services import shunt as shunting
from qaflow_mail.services.inbound import duplicate_reason
from qaflow_mail.services.notices import answers_by_mail, queue_rejection_notice

log = logging.getLogger(__name__)

# What of a refused message's raw bytes is kept: its header block and this much of the body.
REFUSED_RAW_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcomes: dict[str, Outcome]  # per recipient, for LMTP's per-recipient replies
    reply: SmtpReply  # the single SMTP reply for the whole transaction
    message_id: str
    shunted: bool = False


def combine(outcomes: Sequence[Outcome]) -> SmtpReply:
    """All taken → 250; all refused → the first refusal; a mix → 250 (the failures are logged and recorded)."""
    refusals = [o for o in outcomes if not o.accepted]
    if refusals and len(refusals) == len(outcomes):
        return refusals[0].reply
    return OK


async def parse(raw: bytes, deps: Deps) -> ParsedMail:
    """Parsing is CPU work on untrusted input: in a worker process with a deadline, within the configured [limits]
    (raises InputRefused otherwise), so one message never stalls the others."""
    return await parse_untrusted(raw, deps.settings.limits)


def message_deadline(settings: Settings) -> float:
    """Seconds one message may take through the pipeline: each statement is bounded by the database's own
    timeouts and each CPU step by [limits] cpu_deadline; this bounds the message as a whole."""
    return 2 * settings.database.statement_timeout + 2 * settings.limits.cpu_deadline


def bounded_raw(raw: bytes) -> bytes:
    """The header block and the first REFUSED_RAW_BODY_BYTES of the body: enough to see what a refused message
    was, without keeping megabytes of it."""
    return raw[: header_block_size(raw) + REFUSED_RAW_BODY_BYTES]


async def classify_recipient(deps: Deps, address: str) -> Destination | None:
    """Where mail to `address` goes (None: not ours); a slug the cache does not know makes it reload once."""
    settings = deps.settings
    slugs = await deps.categories.slugs(must_contain=address.rpartition("@")[0].lower())
    return classify(address, domain=settings.site.domain, category_slugs=slugs,
                    announce_local=settings.announce.address)


def _post_order(destination: Destination | None) -> int | None:
    """The place of a post address in the order posts are tried; None for an address that makes no post."""
    for index, kind in enumerate(POST_DESTINATIONS):
        if isinstance(destination, kind):
            return index
    return None


async def _process(
    deps: Deps, raw: bytes, parsed: ParsedMail, envelope_from: str, routed: Sequence[tuple[str, Destination | None]],
    source: Source, content: Content | None, answer_by_mail: bool,
) -> dict[str, Outcome]:
    now = deps.clock()

    async def in_transaction(session: AsyncSession) -> dict[str, Outcome]:
        return await _process_in(session, deps, raw, parsed, envelope_from, routed, source, content, now,
                                 answer_by_mail)

    # On SQLite several messages share one transaction (and its fsync); each is answered after it commits.
    return await group_commit(deps.sessions).run(in_transaction)


async def _process_in(
    session: AsyncSession, deps: Deps, raw: bytes, parsed: ParsedMail, envelope_from: str,
    routed: Sequence[tuple[str, Destination | None]], source: Source, content: Content | None, now: datetime,
    answer_by_mail: bool,
) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    # One message makes at most one post: a reply token is tried first, then an announcement, then the
    # categories in the order given; the first that takes the message makes the post, and every later post
    # address shares its outcome. A refusal (e.g. a stranger in a members-only category) moves on to the next.
    post_targets = sorted(
        ((rcpt, dest, order) for rcpt, dest in routed if (order := _post_order(dest)) is not None),
        key=lambda item: item[2],
    )

    async def route(rcpt: str, destination: Destination) -> Outcome:
        ctx = Context(deps=deps, session=session, raw=raw, parsed=parsed, envelope_from=envelope_from,
                      recipient=rcpt, destination=destination, source=source, now=now, content=content)
        # A refusal stores nothing (no staged user, no notice): its writes roll back to this savepoint.
        savepoint = await session.begin_nested()
        outcome = await run(steps_for(destination, source), ctx)
        await (savepoint.commit() if outcome.accepted else savepoint.rollback())
        return outcome

    taken: Outcome | None = None
    for rcpt, destination, _order in post_targets:
        assert destination is not None
        outcomes[rcpt] = taken if taken is not None else await route(rcpt, destination)
        if taken is None and outcomes[rcpt].accepted:
            taken = outcomes[rcpt]
    for rcpt, destination in routed:
        if destination is None or not has_route(destination):
            outcomes[rcpt] = rejected(UNKNOWN_RECIPIENT, f"unknown recipient {rcpt}")
        elif _post_order(destination) is None:
            outcomes[rcpt] = await route(rcpt, destination)
    if answer_by_mail:
        await _answer_refusal(session, deps, parsed=parsed, raw=raw, outcomes=list(outcomes.values()),
                              envelope_from=envelope_from, now=now)
    session.add(_record(raw, parsed, envelope_from, [rcpt for rcpt, _ in routed], source, now, outcomes,
                        None if taken is None else taken.post_id))
    await shunting.forget_failures(session, parsed.sha256)
    return outcomes


async def _answer_refusal(
    session: AsyncSession, deps: Deps, *, parsed: ParsedMail, raw: bytes, outcomes: Sequence[Outcome],
    envelope_from: str, now: datetime,
) -> None:
    """A notice for a message no recipient took, when no SMTP reply tells the sender."""
    if not outcomes or any(o.accepted for o in outcomes):
        return
    refusal = next((o for o in outcomes if o.notify_sender), None)
    if refusal is not None:
        await queue_rejection_notice(session, settings=deps.settings, renderer=deps.renderer, parsed=parsed,
                                     raw=raw, reply=refusal.reply, envelope_from=envelope_from, now=now)


def _record(
    raw: bytes, parsed: ParsedMail, envelope_from: str, recipients: Sequence[str], source: Source, now: datetime,
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
        received_at=now, disposition=disposition, reason=reason[:4000], post_id=post_id,
        raw=bounded_raw(raw) if disposition == Disposition.REJECTED else raw,
    )


async def ingest(
    raw: bytes, *, envelope_from: str, recipients: Sequence[str], source: Source, deps: Deps,
    parsed: ParsedMail | None = None, destinations: Mapping[str, Destination | None] | None = None,
    answer_by_mail: bool | None = None,
) -> IngestResult:
    """Run one message through the pipeline and commit. Raises on a failure the sender must retry (→ 4xx); a
    message that failed [limits] shunt_after_failures times is shunted instead (→ 250, kept for the admins).

    A listener that has parsed the message already (IMAP reads its recipients from it) passes `parsed`; one that
    classified the recipients already (SMTP, at RCPT) passes `destinations`. A refusal is told by mail when
    `answer_by_mail` (default: when the source has no SMTP reply, see services.notices; the inbound queue, whose
    250 went out before, says True).
    """
    started = time.perf_counter()
    source = Source(source)
    by_mail = answers_by_mail(source) if answer_by_mail is None else answer_by_mail
    try:
        if parsed is None:
            parsed = await parse(raw, deps)
        outcomes = await _ingest(deps, raw, parsed, envelope_from, recipients, source, destinations or {}, by_mail)
    except InputRefused as refusal:
        return await _refuse_input(deps, raw, parsed, envelope_from, recipients, source, refusal)
    except Exception as error:
        if shunting.is_temporary(error):
            raise
        return await _count_failure(deps, raw, parsed, envelope_from, recipients, source, error)
    deps.outbox_wakeup()
    reply = combine(list(outcomes.values()))
    log.info(
        "inbound.%s message_id=%s from=%s rcpts=%d post_id=%s ms=%.1f",
        "accepted" if reply.is_success else "rejected", parsed.message_id, parsed.from_address, len(recipients),
        next((o.post_id for o in outcomes.values() if o.post_id), None), (time.perf_counter() - started) * 1000,
    )
    return IngestResult(outcomes=outcomes, reply=reply, message_id=parsed.message_id)


async def _ingest(
    deps: Deps, raw: bytes, parsed: ParsedMail, envelope_from: str, recipients: Sequence[str], source: Source,
    known: Mapping[str, Destination | None], answer_by_mail: bool,
) -> dict[str, Outcome]:
    routed = [(rcpt, known[rcpt] if rcpt in known else await classify_recipient(deps, rcpt)) for rcpt in recipients]
    content = None
    if any(_post_order(d) is not None for _, d in routed) and not await _seen_before(deps, parsed.message_id):
        # The body is read (trimmed, sanitised, our tokens removed) before the transaction, never while it holds
        # the write lock; not for a message taken already (a retry, a shunted one), which it only acknowledges.
        content = await read_body(deps, parsed)
    try:
        return await _process(deps, raw, parsed, envelope_from, routed, source, content, answer_by_mail)
    except IntegrityError:
        # A concurrent delivery of the same message won the race; running again finds it a duplicate.
        log.info("inbound.retry_after_conflict message_id=%s", parsed.message_id)
        return await _process(deps, raw, parsed, envelope_from, routed, source, content, answer_by_mail)


async def _seen_before(deps: Deps, message_id: str) -> bool:
    async with deps.sessions() as session:
        return await duplicate_reason(session, message_id) is not None


async def _refuse_input(
    deps: Deps, raw: bytes, parsed: ParsedMail | None, envelope_from: str, recipients: Sequence[str],
    source: Source, refusal: InputRefused,
) -> IngestResult:
    """A message beyond [limits], or one no reader can read: refused for good, and recorded (bounded) with why."""
    message_id = parsed.message_id if parsed is not None else _unparsed_id(deps, raw)
    outcome = rejected(refusal.reply, refusal.reason)
    async with deps.sessions() as session, session.begin():
        session.add(InboundMessage(
            message_id=message_id[:255], sha256=hashlib.sha256(raw).hexdigest(), envelope_from=envelope_from[:320],
            recipients=json.dumps(list(recipients)), from_address=parsed.from_address[:320] if parsed else "",
            source=source, received_at=deps.clock(), disposition=Disposition.REJECTED,
            reason=f"refused: {refusal.reason}"[:4000], raw=bounded_raw(raw),
        ))
    log.warning("inbound.refused message_id=%s size=%d reason=%s", message_id, len(raw), refusal.reason)
    return IngestResult(outcomes=dict.fromkeys(recipients, outcome), reply=outcome.reply, message_id=message_id)


def _unparsed_id(deps: Deps, raw: bytes) -> str:
    return f"unparsed.{hashlib.sha256(raw).hexdigest()[:40]}@{deps.settings.site.domain}"


async def _count_failure(
    deps: Deps, raw: bytes, parsed: ParsedMail | None, envelope_from: str, recipients: Sequence[str],
    source: Source, error: Exception,
) -> IngestResult:
    """Count a failure of the message itself; shunt it once it has failed often enough, else raise (→ 4xx)."""
    message = shunting.FailedMessage(
        raw=raw, envelope_from=envelope_from, recipients=recipients, source=source,
        message_id=parsed.message_id if parsed is not None else _unparsed_id(deps, raw),
        from_address=parsed.from_address if parsed is not None else "",
        subject=parsed.subject if parsed is not None else "",
    )
    now = deps.clock()
    attempts = await shunting.count_failure(deps, message, error, now=now)
    log.warning("inbound.failed message_id=%s attempts=%d error=%s", message.message_id, attempts,
                shunting.describe(error))
    limit = deps.settings.limits.shunt_after_failures
    if limit <= 0 or attempts < limit:
        raise error
    shunt_id = await shunting.shunt(deps, message, error, attempts=attempts, now=now)
    outcome = shunted(f"shunt {shunt_id}: {shunting.describe(error)}")
    return IngestResult(outcomes=dict.fromkeys(recipients, outcome), reply=outcome.reply,
                        message_id=message.message_id, shunted=True)


async def retry_shunted(deps: Deps, shunt_id: int) -> IngestResult | None:
    """Send a shunted message through the pipeline again (its cause fixed); None when there is no such message.
    A failure raises and leaves it shunted with the new error."""
    async with deps.sessions() as session, session.begin():
        taken = await shunting.take_for_retry(session, shunt_id)
    if taken is None:
        return None
    record, raw = taken
    try:
        return await ingest(raw, envelope_from=record.envelope_from, recipients=record.recipients,
                            source=record.source, deps=deps)
    except Exception as error:
        async with deps.sessions() as session, session.begin():
            await shunting.put_back(session, shunt_id, shunting.describe(error))
        raise
