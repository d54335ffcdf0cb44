"""Accepted mail waiting for the pipeline: one file a message in a directory, as in Postfix's queue.

A message is written to ``tmp/``, fsynced, renamed into ``new/`` and the directory fsynced; only then is it answered
250, so a 250 means it is on disk whatever happens next. A queue worker reads it from ``new/``, runs the pipeline
and removes the file once the pipeline's transaction has committed. A crash in between runs it again, and the
pipeline, which recorded its Message-ID and digest, takes it for the duplicate it is: nothing is posted twice.

A file holds the envelope as one line of JSON, a newline, then the message's bytes as they were received. Names
sort in the order messages arrived. A file no worker can read is moved to ``bad/`` for the operator.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# tmp/ files older than this were never answered 250 (the process died while writing them): removed at start.
STALE_TMP_SECONDS = 3600.0
_counter = itertools.count()
# The envelope line holds at most [smtp] max_recipients addresses: far below this.
ENVELOPE_LINE_LIMIT = 1024 * 1024
COPY_CHUNK = 1024 * 1024


class QueueFull(OSError):
    """The queue's file system would keep less free space than asked if this message were written."""


class UnreadableQueueFile(ValueError):
    """A queue file whose envelope line is not what `put` writes."""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    name: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    source: str
    raw: bytes


def shard_of(name: str, shards: int) -> int:
    """Which of `shards` workers takes the file `name` (each file exactly one)."""
    return zlib.crc32(name.encode()) % shards if shards > 1 else 0


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InboundQueue:
    """The queue directory. Every method blocks on the file system: call them in a thread from the event loop."""

    def __init__(self, directory: str | Path) -> None:
        self.root = Path(directory)
        self.tmp = self.root / "tmp"
        self.new = self.root / "new"
        self.bad = self.root / "bad"

    def prepare(self) -> None:
        """Create the directories, and remove what a process that died while writing left in tmp/."""
        for path in (self.root, self.tmp, self.new, self.bad):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        cutoff = time.time() - STALE_TMP_SECONDS
        for entry in os.scandir(self.tmp):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)

    def put(self, message: bytes | IO[bytes], *, mail_from: str, rcpt_tos: list[str], source: str,
            keep_free: int = 0) -> str:
        """Store one message durably; its name once it is on disk (the caller may answer 250 then). `message` is
        its bytes or a file holding them (a DATA spool), copied in chunks: a large message is never in memory
        whole. Raises QueueFull, writing nothing, when the file system would have less than `keep_free` bytes
        left."""
        size = len(message) if isinstance(message, bytes) else message.seek(0, os.SEEK_END)
        if keep_free > 0:
            stats = os.statvfs(self.root)
            if stats.f_bavail * stats.f_frsize - size < keep_free:
                raise QueueFull(f"less than {keep_free} bytes would be left free in {self.root}")
        name = f"{time.time_ns():020d}.{os.getpid()}.{next(_counter):08d}"
        envelope = json.dumps({"mail_from": mail_from, "rcpt_tos": rcpt_tos, "source": source},
                              ensure_ascii=False).encode("utf-8", "surrogateescape")
        partial = self.tmp / name
        try:
            with open(partial, "xb", opener=_private) as out:
                out.write(envelope + b"\n")
                if isinstance(message, bytes):
                    out.write(message)
                else:
                    message.seek(0)
                    shutil.copyfileobj(message, out, COPY_CHUNK)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.rename(partial, self.new / name)
        _fsync_directory(self.new)
        return name

    def waiting(self) -> list[str]:
        """The names of the messages in the queue, oldest first."""
        return sorted(name for name in os.listdir(self.new) if not name.startswith("."))

    def has_waiting(self) -> bool:
        """Whether any message is in the queue (read or in hand); cheap enough to ask for every message."""
        try:
            with os.scandir(self.new) as entries:
                return any(not entry.name.startswith(".") for entry in entries)
        except FileNotFoundError:
            return False

    def depth(self) -> tuple[int, float]:
        """Messages waiting, and the age in seconds of the oldest (0 when none): what an operator watches."""
        names = self.waiting()
        if not names:
            return 0, 0.0
        try:
            oldest = int(names[0].partition(".")[0]) / 1e9
        except ValueError:
            oldest = time.time()
        return len(names), max(0.0, time.time() - oldest)

    def size(self, name: str) -> int:
        """Bytes of the file `name` (0 when it is gone)."""
        try:
            return (self.new / name).stat().st_size
        except FileNotFoundError:
            return 0

    def read(self, name: str) -> QueuedMessage | None:
        """The message `name`; None when it is gone (taken by another worker). Raises UnreadableQueueFile."""
        try:
            with open(self.new / name, "rb") as stored:
                line = stored.readline(ENVELOPE_LINE_LIMIT)
                raw = stored.read()  # the message read once, not the whole file and then a copy of its tail
        except FileNotFoundError:
            return None
        try:
            envelope = json.loads(line.decode("utf-8", "surrogateescape"))
            if not line.endswith(b"\n") or not isinstance(envelope, dict):
                raise ValueError("no envelope line")
            rcpt_tos = envelope["rcpt_tos"]
            if not isinstance(rcpt_tos, list) or not all(isinstance(r, str) for r in rcpt_tos):
                raise ValueError("recipients are not a list of addresses")
            return QueuedMessage(name=name, mail_from=str(envelope["mail_from"]), rcpt_tos=tuple(rcpt_tos),
                                 source=str(envelope["source"]), raw=raw)
        except (ValueError, KeyError) as error:
            raise UnreadableQueueFile(f"{name}: {error}") from error

    def remove(self, name: str) -> None:
        """Drop a message the pipeline has taken. Not fsynced: should the removal be lost, the pipeline takes the
        message again as a duplicate."""
        (self.new / name).unlink(missing_ok=True)

    def set_aside(self, name: str) -> None:
        """Move an unreadable file to bad/, where the operator finds it."""
        os.replace(self.new / name, self.bad / name)
