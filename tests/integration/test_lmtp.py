"""The LMTP listener (RFC 2033): one reply per recipient after DATA, through the same pipeline as SMTP."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from qaflow_mail.config import LmtpSettings, Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Post
from qaflow_mail.server.app import Running, running
from tests.smtp_client import make_mail


@pytest.fixture
async def lmtp_gateway(settings: Settings) -> AsyncIterator[Running]:
    settings = dataclasses.replace(settings, lmtp=LmtpSettings(enabled=True, port=0))
    async with running(settings) as run:
        async with run.deps.sessions() as session, session.begin():
            await queries.add_category(session, slug="general", name="General", allow_strangers=False)
            await queries.add_category(session, slug="open", name="Open", allow_strangers=True)
            await queries.add_user(session, email="alice@example.org", now=datetime.now(UTC))
        yield run


async def lmtp_conversation(port: int, mail_from: str, rcpts: list[str], raw: bytes) -> tuple[list[str], list[str]]:
    """(RCPT replies, DATA replies): LMTP answers DATA once for every accepted recipient."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> str:
        lines = []
        while True:
            line = (await asyncio.wait_for(reader.readline(), 30)).decode().rstrip("\r\n")
            lines.append(line)
            if line[3:4] != "-":
                return lines[-1]

    async def command(text: str) -> str:
        writer.write(text.encode() + b"\r\n")
        await writer.drain()
        return await reply()

    try:
        assert (await reply()).startswith("220")
        assert (await command("LHLO client.test")).startswith("250")
        assert (await command(f"MAIL FROM:<{mail_from}>")).startswith("250")
        rcpt_replies = [await command(f"RCPT TO:<{rcpt}>") for rcpt in rcpts]
        assert (await command("DATA")).startswith("354")
        writer.write(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b".\r\n")
        await writer.drain()
        accepted = sum(r.startswith("250") for r in rcpt_replies)
        data_replies = [await reply() for _ in range(accepted)]
        await command("QUIT")
    finally:
        writer.close()
        await writer.wait_closed()
    return rcpt_replies, data_replies


async def test_one_reply_per_recipient(lmtp_gateway: Running) -> None:
    assert lmtp_gateway.lmtp_port
    msg = make_mail(sender="stranger@example.com", to="general@forum.test", subject="Hi", message_id="<l1@c.test>")
    rcpt_replies, data_replies = await lmtp_conversation(
        lmtp_gateway.lmtp_port, "stranger@example.com",
        ["general@forum.test", "nosuch@forum.test", "open@forum.test"], msg.as_bytes(),
    )
    assert [r[:9] for r in rcpt_replies] == ["250 2.1.5", "550 5.1.1", "250 2.1.5"]
    # The stranger may not post in general but may in open: each recipient gets its own answer.
    assert [r[:9] for r in data_replies] == ["550 5.7.1", "250 2.0.0"]
    async with lmtp_gateway.deps.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Post)) == 1
