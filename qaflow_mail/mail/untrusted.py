"""Untrusted mail read within [limits]: the work `pipeline.cpu` gives its worker processes (and does itself for
a small message).

A module apart, light to import: a worker imports it (and the parser and body reader it needs) when it unpickles
its first task, not the pipeline package, which pulls in the database layer (about 26 MB more per worker).
"""

from __future__ import annotations

import email.policy
import gc
import re
from dataclasses import dataclass
from email.message import Message
from typing import Generic, TypeVar

from qaflow_mail.config import LimitsSettings
from qaflow_mail.heap import trim
from qaflow_mail.mail.content import Content, extract_content
from qaflow_mail.mail.parse import ParsedMail, message_from_bytes, parse_message

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Refused:
    """What a worker returns instead of raising: exceptions of the parser need not survive pickling."""

    too_complex: bool
    reason: str


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
        tree = message_from_bytes(raw, email.policy.compat32)
        depth, parts = mime_shape(tree)
    except RecursionError:
        return f"MIME parts nested deeper than {limits.max_mime_depth} levels"
    if depth > limits.max_mime_depth:
        return f"MIME parts nested {depth} levels deep (at most {limits.max_mime_depth})"
    if parts > limits.max_mime_parts:
        return f"{parts} MIME parts (at most {limits.max_mime_parts})"
    return None


def parse_within_limits(raw: bytes, limits: LimitsSettings) -> ParsedMail | Refused:
    reason = structure_refusal(raw, limits)
    if reason is not None:
        return Refused(True, reason)
    try:
        parsed = parse_message(raw)
    except RecursionError:
        return Refused(True, f"MIME parts nested deeper than {limits.max_mime_depth} levels")
    except Exception as error:  # the parser's own limits; the same bytes fail the same way every time
        return Refused(False, f"{type(error).__name__} in the MIME structure")
    if parsed.html is not None and len(parsed.html) > limits.max_html_size:
        return Refused(True, f"an HTML body of {len(parsed.html)} characters (at most {limits.max_html_size})")
    return parsed


def extract_within_limits(parsed: ParsedMail) -> Content | Refused:
    try:
        return extract_content(parsed)
    except RecursionError:
        return Refused(True, "HTML nested too deeply")
    except Exception as error:
        return Refused(False, f"{type(error).__name__} while reading the body")


class Handover(Generic[T]):
    """A worker's result, which lets go of its value once pickled for the serving process: pebble keeps a worker's
    last task and result until its next task is done, and for a big message that is its attachments' bytes."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value: T | None = value

    def __reduce__(self) -> tuple[type[Handover[T]], tuple[T | None]]:
        value, self._value = self._value, None
        return Handover, (value,)

    def take(self) -> T:
        assert self._value is not None
        return self._value


# A worker that has read a message this large hands its freed heap back to the system afterwards.
_TRIM_AFTER_BYTES = 1024 * 1024


def parse_in_worker(handed: list[bytes], limits: LimitsSettings) -> Handover[ParsedMail | Refused]:
    """`parse_within_limits` on the bytes in `handed`, taken out of it (the task that brought them is kept by
    pebble until the next one: emptied, it does not keep them)."""
    raw = handed.pop()
    size = len(raw)
    try:
        result = parse_within_limits(raw, limits)
    finally:
        del raw
        if size >= _TRIM_AFTER_BYTES:
            gc.collect()
            trim()
    return Handover(result)


def extract_in_worker(handed: list[ParsedMail]) -> Handover[Content | Refused]:
    """`extract_within_limits` on the message in `handed`, taken out of it as in parse_in_worker."""
    parsed = handed.pop()
    size = parsed.size
    try:
        result = extract_within_limits(parsed)
    finally:
        del parsed
        if size >= _TRIM_AFTER_BYTES:
            gc.collect()
            trim()
    return Handover(result)
