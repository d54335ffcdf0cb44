"""The inbound pipeline: a message flows through small named steps; each returns a new Context or an Outcome."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qaflow_mail.db.models import Disposition
from qaflow_mail.errors import OK, SmtpReply

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from qaflow_mail.db.models import Category, Post, User
    from qaflow_mail.mail.content import Content
    from qaflow_mail.mail.parse import ParsedMail
    from qaflow_mail.pipeline.deps import Deps

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    disposition: Disposition
    reply: SmtpReply = OK
    reason: str = ""
    post_id: int | None = None
    # a rejection notice by mail makes sense (IMAP has no SMTP reply; a post-DATA rejection the sender may miss)
    notify_sender: bool = False

    @property
    def accepted(self) -> bool:
        return self.disposition in (Disposition.ACCEPTED, Disposition.DISCARDED, Disposition.HELD)


def accepted(post_id: int | None = None, reason: str = "") -> Outcome:
    return Outcome(Disposition.ACCEPTED, OK, reason, post_id)


def discarded(reason: str) -> Outcome:
    return Outcome(Disposition.DISCARDED, OK, reason)


def rejected(reply: SmtpReply, reason: str | None = None, *, notify_sender: bool = True) -> Outcome:
    return Outcome(Disposition.REJECTED, reply, reason or reply.text, None, notify_sender)


@dataclass(frozen=True, slots=True)
class Context:
    deps: Deps
    session: AsyncSession
    raw: bytes
    parsed: ParsedMail
    envelope_from: str
    recipient: str
    destination: Any
    source: str
    now: datetime
    author: User | None = None
    category: Category | None = None
    parent: Post | None = None
    token_ids: tuple[int, ...] = ()
    candidates: tuple[str, ...] = ()
    content: Content | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Step = Callable[[Context], Awaitable["Context | Outcome"]]


async def run(steps: Sequence[Step], ctx: Context) -> Outcome:
    for step in steps:
        result = await step(ctx)
        if isinstance(result, Outcome):
            log.debug("step %s -> %s (%s) message_id=%s", step.__name__, result.disposition, result.reason,
                      ctx.parsed.message_id)
            return result
        ctx = result
    raise RuntimeError("pipeline ended without an outcome")
