"""1,100 idle connections to a real `serve` whose file limit is 1,024 (soft and hard: it cannot raise it).

Before the connection caps, new clients got no banner once the descriptors ran out, and every failed accept()
wrote a log line (370 MB a minute). Now the total cap answers every connection beyond it with `421 4.7.0` and
closes it, so descriptors never run out: every client gets an answer, a new one too, and once the idle ones go a
mail gets its `250`. The log stays small.
"""

from __future__ import annotations

import asyncio
import resource
import time
from contextlib import suppress
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.integration.test_kill9 import GENERAL, SENDERS, seed
from tests.serve_process import ServeProcess
from tests.smtp_client import make_mail

IDLE_CONNECTIONS = 1_100
FILE_LIMIT = 1_024
TOTAL_CAP = 400
ANSWER_DEADLINE = 20.0
MAX_LOG_BYTES = 256 * 1024


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, database_url: str) -> str:
    return database_url  # descriptors and caps live in the listener: one backend is enough


def _room_for(connections: int) -> None:
    """This test process holds the other end of every connection: let it (it may raise its soft limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + 256
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the test needs {needed} open files; this system allows {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _first_line(port: int) -> tuple[str, asyncio.StreamWriter | None]:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as error:
        return f"connect failed: {error}", None
    try:
        line = await asyncio.wait_for(reader.readline(), ANSWER_DEADLINE)
    except (TimeoutError, OSError) as error:
        return f"no answer: {type(error).__name__}", writer
    return line.decode(errors="replace").strip(), writer


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


async def test_1100_idle_connections_under_a_1024_file_limit(
    tmp_path: Path, database_url: str, sessions: async_sessionmaker[AsyncSession],
) -> None:
    _room_for(IDLE_CONNECTIONS)
    await seed(sessions)
    server = ServeProcess(tmp_path, database_url=database_url, nofile_limit=FILE_LIMIT, extra={
        "smtp": {"max_connections": TOTAL_CAP, "max_connections_per_client": 10 * IDLE_CONNECTIONS,
                 "idle_timeout": 300},
        "logging": {"level": "INFO"},
    })
    await asyncio.to_thread(server.start)
    writers: list[asyncio.StreamWriter | None] = []
    try:
        answers = []
        for start in range(0, IDLE_CONNECTIONS, 100):  # in waves, as a flood arrives; all held open
            wave = await asyncio.gather(*(_first_line(server.port) for _ in range(min(100, IDLE_CONNECTIONS - start))))
            answers += [line for line, _ in wave]
            writers += [writer for _, writer in wave]
        banners = sum(line.startswith("220") for line in answers)
        refusals = sum(line.startswith("421 4.7.0") for line in answers)
        unanswered = [line for line in answers if not line.startswith(("220", "421 4.7.0"))]
        assert unanswered == [], unanswered[:5]
        assert banners == TOTAL_CAP and refusals == IDLE_CONNECTIONS - TOTAL_CAP

        # While the idle ones are held, a new client is still answered, at once and clearly.
        line, writer = await _first_line(server.port)
        await _close(writer)
        assert line.startswith("421 4.7.0"), line

        for held in writers:
            await _close(held)
        writers.clear()
        raw = make_mail(sender=SENDERS[0], to=GENERAL, subject="After the flood", body="Still here.",
                        message_id="<after-flood@client.test>")
        deadline = time.monotonic() + ANSWER_DEADLINE
        while True:  # the server notices the closed connections as they go
            try:
                await aiosmtplib.send(raw, sender=SENDERS[0], recipients=[GENERAL], hostname="127.0.0.1",
                                      port=server.port, timeout=ANSWER_DEADLINE)
                break
            except aiosmtplib.SMTPResponseException as exc:
                assert exc.code == 421, f"{exc.code} {exc.message}"
            if time.monotonic() > deadline:
                raise AssertionError("no 250 after the idle connections closed")
            await asyncio.sleep(0.05)  # poll interval of the deadline loop
        assert server.process is not None and server.process.poll() is None
        assert server.log_path.stat().st_size < MAX_LOG_BYTES, server.log_tail()
    finally:
        for held in writers:
            await _close(held)
        await asyncio.to_thread(server.stop)
