"""pipeline.cpu's worker pool: a large message is read by one worker at a time (two at once would need room for
two peaks), a small one meanwhile by the other; and what a worker reads comes back as it would be read here."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qaflow_mail.config import LimitsSettings
from qaflow_mail.mail.content import extract_content
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.pipeline.cpu import LARGE_MESSAGE_BYTES, CpuPool, extract_untrusted, parse_untrusted

WITHIN = 30.0  # seconds: bounds every wait below (a spawned worker imports for a second or two)


def hold(folder: str, name: str) -> str:
    """In a worker: mark `name` started, then wait for the test to let it finish (`name`.go)."""
    (Path(folder) / f"{name}.started").touch()
    go = Path(folder) / f"{name}.go"
    deadline = time.monotonic() + 2 * WITHIN  # past the test's own waits, so a task left running fails the test
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was never let go")
        time.sleep(0.01)
    return name


async def appears(path: Path) -> None:
    """Return once `path` exists (a worker made it); fail the test after WITHIN seconds."""
    deadline = time.monotonic() + WITHIN
    while not await asyncio.to_thread(path.exists):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name}: not within {WITHIN}s")
        await asyncio.sleep(0.01)  # poll interval of the deadline loop


@pytest.fixture
async def pool() -> AsyncIterator[CpuPool]:
    made = CpuPool(2)
    try:
        yield made
    finally:
        made.close()


async def test_large_messages_are_read_one_at_a_time_and_small_ones_meanwhile(pool: CpuPool, tmp_path: Path) -> None:
    folder = str(tmp_path)
    first = asyncio.create_task(pool.run(hold, folder, "first", deadline=3 * WITHIN, size=LARGE_MESSAGE_BYTES))
    await appears(tmp_path / "first.started")
    second = asyncio.create_task(pool.run(hold, folder, "second", deadline=3 * WITHIN, size=LARGE_MESSAGE_BYTES))
    await asyncio.sleep(0)  # lets `second` reach the pool (were it not held back, it would take the free worker)

    # A small task finds the other worker free: the second large one is not on it.
    (tmp_path / "small.go").touch()
    async with asyncio.timeout(WITHIN):
        assert await pool.run(hold, folder, "small", deadline=3 * WITHIN, size=LARGE_MESSAGE_BYTES - 1) == "small"
    assert not (tmp_path / "second.started").exists()
    assert not second.done()

    (tmp_path / "first.go").touch()
    async with asyncio.timeout(WITHIN):
        assert await first == "first"
    await appears(tmp_path / "second.started")
    (tmp_path / "second.go").touch()
    async with asyncio.timeout(WITHIN):
        assert await second == "second"


def mail_with_a_forward_and_a_binary(binary_size: int) -> bytes:
    encoded = base64.encodebytes(random.Random(7).randbytes(binary_size)).replace(b"\n", b"\r\n")
    return (
        b"From: alice@example.org\r\nTo: general@forum.test\r\nSubject: Fwd: original\r\nMIME-Version: 1.0\r\n"
        b"Message-ID: <fwd@example.org>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nWhat do you make of this?\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: carol@example.org\r\nSubject: original\r\n\r\n"
        b"The original question, word for word.\r\n"
        b"--b\r\nContent-Type: application/octet-stream; name=data.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded + b"--b--\r\n"
    )


async def test_a_large_message_read_in_a_worker_is_read_as_it_is_here() -> None:
    raw = mail_with_a_forward_and_a_binary(LARGE_MESSAGE_BYTES)
    limits = LimitsSettings()
    assert len(raw) >= max(limits.cpu_inline_size, LARGE_MESSAGE_BYTES)

    parsed = await parse_untrusted(raw, limits)
    assert parsed == parse_message(raw)
    assert [a.content_type for a in parsed.attachments] == ["message/rfc822", "application/octet-stream"]
    assert parsed.attachments[1].size == LARGE_MESSAGE_BYTES

    content = await extract_untrusted(parsed, limits)
    assert content == extract_content(parsed)
    assert content.forwarded  # the forwarded message went to the worker with the body
