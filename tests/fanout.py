"""Driving the real outbound path from a test: wait (with a deadline) until the fan-out worker has expanded every
job into outbox rows, then drain the outbox to an SMTP sink with the real sender."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import CategorySubscription, SubscriptionMode, User
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.sender import sending
from qaflow_mail.services.fanout_jobs import unfinished
from tests.sink import SinkMessage, SmtpSink


async def fanout_done(deps: Deps, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a deadline, not a sleep)
    """Return once no fan-out job is left unfinished; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        async with deps.sessions() as session:
            left = await unfinished(session)
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"fan-out: {left} job(s) unfinished after {timeout}s")
        await asyncio.sleep(0.01)  # poll interval of the deadline loop


async def delivered(deps: Deps, sink: SmtpSink, expected: int) -> list[SinkMessage]:
    """Fan out, drain the outbox to `sink`; exactly `expected` new messages must arrive. Returns them."""
    before = len(sink.messages)
    await fanout_done(deps)
    async with sending(deps) as sender:
        await sender.flush()
    messages = await sink.wait_for(before + expected)
    assert len(messages) == before + expected, [(m.rcpt_tos, m.parsed()["Subject"]) for m in messages[before:]]
    return messages[before:]


def by_recipient(messages: list[SinkMessage]) -> dict[str, SinkMessage]:
    return {message.rcpt_tos[0]: message for message in messages}


async def add_followers(session: AsyncSession, *, category_id: int, count: int, now: datetime) -> None:
    """`count` users follower00000@example.net … following the category post by post, in two statements."""
    await session.execute(insert(User), [
        {"email": f"follower{i:05d}@example.net", "display_name": f"Follower {i}", "created_at": now}
        for i in range(count)
    ])
    ids = (await session.scalars(select(User.id).where(User.email.like("follower%")))).all()
    await session.execute(insert(CategorySubscription), [
        {"user_id": uid, "category_id": category_id, "mode": SubscriptionMode.EACH.value, "created_at": now}
        for uid in ids
    ])
