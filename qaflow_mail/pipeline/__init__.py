"""The inbound pipeline: a message flows through small steps; each returns a new Context or an Outcome.

A step adapts the Context to one service call (``qaflow_mail.services``) and says what happened; the order of
steps for each kind of address lives in ``pipeline.routes``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from qaflow_mail.db.models import Disposition, Source
from qaflow_mail.replies import OK, SHUNTED, Refusal, SmtpReply

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from qaflow_mail.db.models import Category, Post, User
    from qaflow_mail.deps import Deps
    from qaflow_mail.mail.addresses import Destination
    from qaflow_mail.mail.content import Content
    from qaflow_mail.mail.dkim_check import AuthVerdict
    from qaflow_mail.mail.parse import ParsedMail

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    disposition: Disposition
    reply: SmtpReply = OK
    reason: str = ""
    post_id: int | None = None

    @property
    def accepted(self) -> bool:
        return self.disposition in (Disposition.ACCEPTED, Disposition.DISCARDED, Disposition.HELD,
                                    Disposition.SHUNTED)

    @property
    def notify_sender(self) -> bool:
        """Whether a refusal may be answered by mail where no SMTP reply reaches the sender (IMAP)."""
        return self.disposition == Disposition.REJECTED and self.reply.notice is not None


def accepted(post_id: int | None = None, reason: str = "") -> Outcome:
    return Outcome(Disposition.ACCEPTED, OK, reason, post_id)


def held(reason: str) -> Outcome:
    return Outcome(Disposition.HELD, OK, reason)


def shunted(reason: str) -> Outcome:
    return Outcome(Disposition.SHUNTED, SHUNTED, reason)


def discarded(reason: str) -> Outcome:
    return Outcome(Disposition.DISCARDED, OK, reason)


def rejected(reply: SmtpReply | Refusal, reason: str | None = None) -> Outcome:
    if isinstance(reply, Refusal):
        return Outcome(Disposition.REJECTED, reply.reply, reason or reply.reason)
    return Outcome(Disposition.REJECTED, reply, reason or reply.text)


@dataclass(frozen=True, slots=True)
class Context:
    """One message on its way to one recipient address, and what the steps so far have found out."""

    deps: Deps
    session: AsyncSession
    raw: bytes
    parsed: ParsedMail
    envelope_from: str
    recipient: str
    destination: Destination
    source: Source
    now: datetime
    author: User | None = None
    category: Category | None = None
    parent: Post | None = None
    token_ids: tuple[int, ...] = ()
    candidates: tuple[str, ...] = ()
    known_ancestors: Mapping[str, int] | None = None  # the placement's lookup of the headers' ancestors
    content: Content | None = None  # the body as the post shows it (pipeline.body.read_body)
    announce_verdict: AuthVerdict | None = None
    post: Post | None = None


Step = Callable[[Context], Awaitable["Context | Outcome"]]


async def run(steps: Sequence[Step], ctx: Context) -> Outcome:
    for step in steps:
        log.debug("step %s message_id=%s rcpt=%s", step.__name__, ctx.parsed.message_id, ctx.recipient)
        result = await step(ctx)
        if isinstance(result, Outcome):
            log.debug("step %s -> %s (%s) message_id=%s", step.__name__, result.disposition, result.reason,
                      ctx.parsed.message_id)
            return result
        ctx = result
    raise RuntimeError("pipeline ended without an outcome")
