"""CPU work on untrusted mail (parsing; trimming and sanitising the body) in worker processes, never on the loop.

A thread is no shield: the GIL lets one big HTML body starve every other connection. Each message but the small
ones (below [limits] cpu_inline_size: the code is linear, so they cost a few milliseconds, less than the round
trip to a worker) runs in a process of a small pool (pebble) with a deadline; a worker past its deadline is
killed and replaced, and the message is refused for good (`554 5.6.0`), as is one that breaks the [limits] caps
on its structure (MIME depth, parts, header and HTML size) or that the parser cannot read at all. Such a message
fails the same way every time, so a temporary answer would only make the sender's MTA retry it for days.

What a worker runs is `mail.untrusted`. A worker reads a large message (LARGE_MESSAGE_BYTES) only while no other
does: its peak is a few times the message's size.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import multiprocessing
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from pebble import ProcessExpired, ProcessFuture, ProcessPool

from qaflow_mail.config import LimitsSettings
from qaflow_mail.heap import return_large_buffers
from qaflow_mail.mail.content import Content, extract_content
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.untrusted import (
    Handover,
    Refused,
    extract_in_worker,
    extract_within_limits,
    parse_in_worker,
    parse_within_limits,
)
from qaflow_mail.replies import MESSAGE_TOO_COMPLEX, MESSAGE_UNREADABLE, SmtpReply

log = logging.getLogger(__name__)

T = TypeVar("T")


class CpuPoolBroken(OSError):
    """The worker processes could not be started or all died at once: temporary, the pool is made anew."""


class InputRefused(Exception):
    """The message itself is beyond what the gateway will process; `reply` names why (a 5xx)."""

    def __init__(self, reply: SmtpReply, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply.with_text(f"{reply.text}: {reason}")
        self.reason = reason


# A message this large is read by one worker at a time: a worker needs about 4 times a message's size while it
# reads it, and two such peaks at once are what the serving host must otherwise have room for. Smaller messages
# use the other worker meanwhile.
LARGE_MESSAGE_BYTES = 4 * 1024 * 1024


class CpuPool:
    """Worker processes (spawned: the serving process has threads a fork would copy mid-lock) and the deadline
    each message gets there."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool = ProcessPool(max_workers=self.workers, context=multiprocessing.get_context("spawn"),
                                 initializer=return_large_buffers)
        # One per event loop (an asyncio lock belongs to one); the gateway serves on one.
        self._large: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())

    async def run(self, function: Callable[..., object], *args: object, deadline: float, size: int = 0) -> object:
        """`function(*args)` in a worker within `deadline` seconds (waiting for a worker does not count); `size`
        is the bytes of mail it reads: from LARGE_MESSAGE_BYTES on, one such task runs at a time."""
        if size < LARGE_MESSAGE_BYTES:
            return await self._run(function, args, deadline)
        loop = asyncio.get_running_loop()
        gate = self._large.get(loop)
        if gate is None:
            gate = self._large[loop] = asyncio.Lock()
        async with gate:
            return await self._run(function, args, deadline)

    async def _run(self, function: Callable[..., object], args: tuple[object, ...], deadline: float) -> object:
        future: ProcessFuture[object] = self._pool.schedule(function, args=args, timeout=deadline)
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            return Refused(True, f"more than {deadline:g} s of work")
        except ProcessExpired as expired:  # killed by the system (memory) or crashed on this input
            return Refused(False, f"the reader stopped ({expired})")
        except BrokenProcessPool as broken:
            _forget(self)
            raise CpuPoolBroken(f"worker processes unavailable: {broken}") from broken
        except asyncio.CancelledError:
            future.cancel()  # type: ignore[no-untyped-call]  # stops the worker running this message
            raise

    def close(self) -> None:
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join(timeout=10)


_lock = threading.Lock()
_shared: CpuPool | None = None


def shared_pool(workers: int) -> CpuPool:
    """The process's pool (made on first use; `workers` counts then): one per process, shared by listeners."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = CpuPool(workers)
            atexit.register(close_shared_pool)
        return _shared


def _forget(pool: CpuPool) -> None:
    """Drop a broken pool so the next message makes a new one."""
    global _shared
    with _lock:
        if _shared is pool:
            _shared = None
    pool.close()


def close_shared_pool() -> None:
    global _shared
    with _lock:
        pool, _shared = _shared, None
    if pool is not None:
        pool.close()


def _unwrap(result: object, kind: type[T]) -> T:
    if isinstance(result, Handover):
        result = result.take()
    if isinstance(result, Refused):
        raise InputRefused(MESSAGE_TOO_COMPLEX if result.too_complex else MESSAGE_UNREADABLE, result.reason)
    assert isinstance(result, kind)
    return result


async def parse_untrusted(raw: bytes, limits: LimitsSettings) -> ParsedMail:
    """`parse_message` in a worker within [limits]; raises InputRefused for a message beyond them."""
    if len(raw) < limits.cpu_inline_size:
        return _unwrap(parse_within_limits(raw, limits), ParsedMail)
    pool = shared_pool(limits.cpu_workers)
    result = await pool.run(parse_in_worker, [raw], limits, deadline=limits.cpu_deadline, size=len(raw))
    return _unwrap(result, ParsedMail)


def _body_only(parsed: ParsedMail) -> ParsedMail:
    """`parsed` with only the attachments `extract_content` reads (forwarded messages): the others' bytes need
    not travel to a worker and back."""
    kept = tuple(a for a in parsed.attachments if a.content_type.lower() == "message/rfc822")
    return parsed if len(kept) == len(parsed.attachments) else dataclasses.replace(parsed, attachments=kept)


async def extract_untrusted(
    parsed: ParsedMail, limits: LimitsSettings, extract: Callable[[ParsedMail], Content] = extract_content
) -> Content:
    """`extract_content` (trimming, HTML sanitising) in a worker with the deadline; raises InputRefused.

    Any other `extract` (a stand-in through which tests inject failures) runs in a thread of this process, as
    it is: it may not survive pickling, and its exceptions are its caller's to see."""
    if extract is not extract_content:
        return await asyncio.to_thread(extract, parsed)
    if parsed.size < limits.cpu_inline_size:
        return _unwrap(extract_within_limits(parsed), Content)
    pool = shared_pool(limits.cpu_workers)
    result = await pool.run(extract_in_worker, [_body_only(parsed)], deadline=limits.cpu_deadline, size=parsed.size)
    return _unwrap(result, Content)
