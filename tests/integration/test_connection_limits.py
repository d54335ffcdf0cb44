"""Connections are bounded: per client and in all, in commands that move no mail, and in idle time, which a slow
but progressing DATA upload resets; no token reaches a log line, and a flood of log lines is thinned."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import pytest

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.server.app import Running
from qaflow_mail.server.log_guard import RateLimit, redact_tokens

GENERAL = "general@forum.test"
READ_DEADLINE = 10.0


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, database_url: str) -> str:
    return database_url  # the limits live in the listener: one backend is enough


@pytest.fixture
def settings(settings: Settings) -> Settings:
    smtp = dataclasses.replace(settings.smtp, max_connections=4, max_connections_per_client=3, junk_command_limit=5,
                               idle_timeout=0.5)
    return dataclasses.replace(settings, smtp=smtp)


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def reply(reader: asyncio.StreamReader) -> str:
    """One whole reply (its last line), or "" at EOF."""
    while True:
        line = (await asyncio.wait_for(reader.readline(), READ_DEADLINE)).decode()
        if not line or line[3:4] != "-":
            return line.strip()


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> str:
    writer.write(line.encode() + b"\r\n")
    await writer.drain()
    return await reply(reader)


async def test_one_client_gets_at_most_its_share_of_connections(gateway: Running) -> None:
    async with connection(gateway.smtp_port) as a, connection(gateway.smtp_port) as b, \
            connection(gateway.smtp_port) as c:
        for reader, _ in (a, b, c):
            assert (await reply(reader)).startswith("220")
        async with connection(gateway.smtp_port) as (reader, _):
            assert (await reply(reader)).startswith("421 4.7.0")
            assert await reply(reader) == ""  # and closed
    # once they are gone, the client is welcome again (the count is released on close)
    deadline = asyncio.get_running_loop().time() + READ_DEADLINE
    while True:
        async with connection(gateway.smtp_port) as (reader, _):
            if (await reply(reader)).startswith("220"):
                break
        assert asyncio.get_running_loop().time() < deadline, "the connections were never released"


async def test_commands_that_move_no_mail_are_limited(gateway: Running) -> None:
    async with connection(gateway.smtp_port) as (reader, writer):
        assert (await reply(reader)).startswith("220")
        answers = [await command(reader, writer, "NOOP") for _ in range(6)]
        assert answers[:5] == ["250 OK"] * 5
        assert answers[5].startswith("421 4.7.0")
        assert await reply(reader) == ""


async def test_an_idle_connection_is_closed_with_421(gateway: Running) -> None:
    async with connection(gateway.smtp_port) as (reader, writer):
        assert (await reply(reader)).startswith("220")
        assert (await command(reader, writer, "EHLO client.test")).startswith("250")
        assert (await reply(reader)).startswith("421 4.4.2")  # after idle_timeout, with nothing sent
        assert await reply(reader) == ""


async def test_a_slow_upload_that_progresses_is_not_cut(gateway: Running) -> None:
    async with gateway.deps.sessions() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=True)
    async with connection(gateway.smtp_port) as (reader, writer):
        assert (await reply(reader)).startswith("220")
        for line in ("EHLO client.test", "MAIL FROM:<alice@example.org>", f"RCPT TO:<{GENERAL}>"):
            assert (await command(reader, writer, line)).startswith("250")
        assert (await command(reader, writer, "DATA")).startswith("354")
        writer.write(b"From: alice@example.org\r\nTo: general@forum.test\r\nSubject: slow\r\n\r\n")
        # Eight chunks 0.2 s apart: 1.6 s in all, three times the idle timeout, but never idle for 0.5 s.
        for index in range(8):
            writer.write(f"line {index} of a slow upload\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.write(b".\r\n")
        assert (await reply(reader)).startswith("250")


async def test_tokens_never_reach_the_log(gateway: Running, caplog: pytest.LogCaptureFixture) -> None:
    token = "Zq8secrettokenvalue0123456789"
    caplog.set_level(logging.DEBUG)
    async with connection(gateway.smtp_port) as (reader, writer):
        assert (await reply(reader)).startswith("220")
        await command(reader, writer, "EHLO client.test")
        await command(reader, writer, "MAIL FROM:<alice@example.org>")
        await command(reader, writer, f"RCPT TO:<reply+{token}@forum.test>")
        await command(reader, writer, f"RCPT TO:<unsubscribe+{token}@forum.test>")
        await command(reader, writer, "QUIT")
    messages = [record.getMessage() for record in caplog.records]
    assert any("RCPT" in m for m in messages)  # the commands were logged...
    assert not any(token in m for m in messages)  # ...without the token


def test_redaction_keeps_the_address_shape() -> None:
    assert redact_tokens("recip: reply+abc.DEF-123@forum.test") == "recip: reply+…@forum.test"
    assert redact_tokens("b'RCPT TO:<bounces+x_y@forum.test>'") == "b'RCPT TO:<bounces+…@forum.test>'"
    assert redact_tokens("general@forum.test") == "general@forum.test"


def test_a_flood_of_log_lines_is_thinned() -> None:
    logger = logging.getLogger("tests.flood")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    limit = RateLimit(per_second=10)
    logger.addFilter(limit)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for index in range(10_000):
            logger.warning("flood %d", index)
    finally:
        logger.removeFilter(limit)
        logger.removeHandler(handler)
    assert len(records) <= 10 * 3  # the loop takes well under three seconds
