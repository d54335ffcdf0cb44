"""CPU work on untrusted mail (parsing; trimming and sanitising the body) in worker processes, never on the loop.

A thread is no shield: the GIL lets one big HTML body starve every other connection. Each message but the small
ones (below [limits] cpu_inline_size: the code is linear, so they cost a few milliseconds, less than the round
trip to a worker) runs in a process of a small pool (pebble) with a deadline; a worker past its deadline is
killed and replaced, and the message is refused for good (`554 5.6.0`), as is one that breaks the [limits] caps
on its structure (MIME depth, parts, header and HTML size) or that the parser cannot read at all. Such a message
fails the same way every time, so a temporary answer would only make the sender's MTA retry it for days.
"""

from __future__ import annotations

import asyncio
import atexit
import email
import email.policy
import gc
import logging
import multiprocessing
import re
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from email.message import Message
from typing import TypeVar

from pebble import ProcessExpired, ProcessFuture, ProcessPool

from qaflow_mail.config import LimitsSettings
from qaflow_mail.heap import return_large_buffers, trim
from qaflow_mail.mail.content import Content, extract_content
from qaflow_mail.mail.parse import ParsedMail, parse_message
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


@dataclass(frozen=True, slots=True)
class _Refused:
    """What a worker returns instead of raising: exceptions of the parser need not survive pickling."""

    too_complex: bool
    reason: str


# --- in the worker process ------------------------------------------------------------------------------------

def header_block_size(raw: bytes) -> int:
    """Bytes before the blank line that ends the top-level header block (all of them when there is none)."""
    ends = [found for found in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if found >= 0]
    return min(ends) if ends else len(raw)


def mime_shape(message: Message) -> tuple[int, int]:
    """(deepest nesting, number of parts) of a parsed tree, walked without recursion."""
    deepest, parts = 0, 0
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        node, depth = stack.pop()
        parts += 1
        deepest = max(deepest, depth)
        if node.is_multipart():
            payload = node.get_payload()
            if isinstance(payload, list):
                stack.extend((child, depth + 1) for child in payload if isinstance(child, Message))
    return deepest, parts


_BOUNDARY_RE = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.IGNORECASE)


def _declared_boundary(lines: list[bytes], start: int) -> tuple[bytes | None, int]:
    """The boundary that the header block starting at `start` declares for a multipart part (None: not one), and
    the index of the line after the block."""
    end, content_type, in_content_type = start, b"", False
    while end < len(lines) and lines[end].strip():
        line = lines[end]
        if line[:1] in (b" ", b"\t"):
            if in_content_type:
                content_type += b" " + line.strip()
        else:
            in_content_type = line[:13].lower() == b"content-type:"
            if in_content_type:
                content_type = line[13:].strip()
        end += 1
    if not content_type.lower().startswith(b"multipart/"):
        return None, end
    found = _BOUNDARY_RE.search(content_type)
    return (found.group(1) or found.group(2) if found else None), end


def multipart_depth(raw: bytes, limit: int) -> int:
    """How deep multipart parts nest, read in one pass over the lines (the parser's own walk is quadratic in the
    depth): a header block at the top or right after a delimiter line that declares a multipart boundary opens a
    level; a delimiter of an enclosing boundary closes the levels inside it. Stops once past `limit`."""
    lines = raw.split(b"\n")
    stack: list[bytes] = []
    level_of: dict[bytes, int] = {}
    boundary, index = _declared_boundary(lines, 0)
    if boundary is not None:
        stack.append(boundary)
        level_of[boundary] = 0
    deepest = len(stack)
    while index < len(lines) and stack and deepest <= limit:
        line = lines[index].rstrip()
        index += 1
        if not line.startswith(b"--"):
            continue
        name = line[2:]
        closing = name.endswith(b"--") and name[:-2] in level_of
        if closing:
            name = name[:-2]
        level = level_of.get(name)
        if level is None:
            continue
        for inner in stack[level + (0 if closing else 1):]:
            level_of.pop(inner, None)
        del stack[level + (0 if closing else 1):]
        if closing:
            continue
        boundary, index = _declared_boundary(lines, index)
        if boundary is not None and boundary not in level_of:
            level_of[boundary] = len(stack)
            stack.append(boundary)
            deepest = max(deepest, len(stack))
    return deepest


def structure_refusal(raw: bytes, limits: LimitsSettings) -> str | None:
    """Why the message's structure is beyond [limits] (None: within them). Linear in the input."""
    header_size = header_block_size(raw)
    if header_size > limits.max_header_size:
        return f"a header block of {header_size} bytes (at most {limits.max_header_size})"
    lowered = raw.lower()
    # Cheap upper bounds first: nesting needs a container type per level, a part needs a delimiter line.
    containers = lowered.count(b"multipart/") + lowered.count(b"message/")
    delimiters = raw.count(b"\n--") + 1
    if containers <= limits.max_mime_depth and delimiters <= limits.max_mime_parts:
        return None
    if containers > limits.max_mime_depth and multipart_depth(raw, limits.max_mime_depth) > limits.max_mime_depth:
        return f"MIME parts nested deeper than {limits.max_mime_depth} levels"
    try:
        tree = email.message_from_bytes(raw, policy=email.policy.compat32)
        depth, parts = mime_shape(tree)
    except RecursionError:
        return f"MIME parts nested deeper than {limits.max_mime_depth} levels"
    if depth > limits.max_mime_depth:
        return f"MIME parts nested {depth} levels deep (at most {limits.max_mime_depth})"
    if parts > limits.max_mime_parts:
        return f"{parts} MIME parts (at most {limits.max_mime_parts})"
    return None


def parse_within_limits(raw: bytes, limits: LimitsSettings) -> ParsedMail | _Refused:
    reason = structure_refusal(raw, limits)
    if reason is not None:
        return _Refused(True, reason)
    try:
        parsed = parse_message(raw)
    except RecursionError:
        return _Refused(True, f"MIME parts nested deeper than {limits.max_mime_depth} levels")
    except Exception as error:  # the parser's own limits; the same bytes fail the same way every time
        return _Refused(False, f"{type(error).__name__} in the MIME structure")
    if parsed.html is not None and len(parsed.html) > limits.max_html_size:
        return _Refused(True, f"an HTML body of {len(parsed.html)} characters (at most {limits.max_html_size})")
    return parsed


def extract_within_limits(parsed: ParsedMail) -> Content | _Refused:
    try:
        return extract_content(parsed)
    except RecursionError:
        return _Refused(True, "HTML nested too deeply")
    except Exception as error:
        return _Refused(False, f"{type(error).__name__} while reading the body")


# --- in the serving process -----------------------------------------------------------------------------------

class CpuPool:
    """Worker processes (spawned: the serving process has threads a fork would copy mid-lock) and the deadline
    each message gets there."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool = ProcessPool(max_workers=self.workers, context=multiprocessing.get_context("spawn"),
                                 initializer=return_large_buffers)

    async def run(self, function: Callable[..., object], *args: object, deadline: float) -> object:
        future: ProcessFuture[object] = self._pool.schedule(function, args=args, timeout=deadline)
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            return _Refused(True, f"more than {deadline:g} s of work")
        except ProcessExpired as expired:  # killed by the system (memory) or crashed on this input
            return _Refused(False, f"the reader stopped ({expired})")
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
    if isinstance(result, _Refused):
        raise InputRefused(MESSAGE_TOO_COMPLEX if result.too_complex else MESSAGE_UNREADABLE, result.reason)
    assert isinstance(result, kind)
    return result


# A worker that has read a message this large hands its freed heap back to the system afterwards.
_TRIM_AFTER_BYTES = 1024 * 1024


def parse_in_worker(raw: bytes, limits: LimitsSettings) -> ParsedMail | _Refused:
    try:
        return parse_within_limits(raw, limits)
    finally:
        if len(raw) >= _TRIM_AFTER_BYTES:
            gc.collect()
            trim()


def extract_in_worker(parsed: ParsedMail) -> Content | _Refused:
    try:
        return extract_within_limits(parsed)
    finally:
        if parsed.size >= _TRIM_AFTER_BYTES:
            gc.collect()
            trim()


async def parse_untrusted(raw: bytes, limits: LimitsSettings) -> ParsedMail:
    """`parse_message` in a worker within [limits]; raises InputRefused for a message beyond them."""
    if len(raw) < limits.cpu_inline_size:
        return _unwrap(parse_within_limits(raw, limits), ParsedMail)
    pool = shared_pool(limits.cpu_workers)
    return _unwrap(await pool.run(parse_in_worker, raw, limits, deadline=limits.cpu_deadline), ParsedMail)


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
    return _unwrap(await pool.run(extract_in_worker, parsed, deadline=limits.cpu_deadline), Content)
