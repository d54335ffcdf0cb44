"""The ids of outbox rows a relay has accepted, written the moment each 250 comes back, before their "sent" mark
is committed to the database.

A send slot then waits only for the relay, not for a database commit as well: the append is one `write` to a file
the kernel holds, which outlives the process (`kill -9`, a crash), so a restarted sender marks those rows sent
before it claims anything, and no message the relay took is sent again. What a power cut can lose is the last few
ids not yet committed (the file is not fsynced): those messages are sent again, a duplicate at worst.

One sender owns the file at a time (an exclusive `flock`); another sender in the same data directory does without
and waits for each commit, as before. The file is emptied whenever every id in it is committed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class SentJournal:
    def __init__(self, fd: int, pending: list[int]) -> None:
        self._fd = fd
        self._pending = pending

    @classmethod
    def open(cls, path: Path) -> SentJournal | None:
        """The journal at `path` with the ids a previous owner left in it; None when another sender holds it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        with open(fd, "rb", closefd=False) as existing:
            left = existing.read()
        # A line cut short by the crash is not an id the relay accepted for sure: the row is sent again.
        pending = [int(line) for line in left.split(b"\n")[:-1] if line.isdigit()]
        return cls(fd, pending)

    @property
    def pending(self) -> list[int]:
        """Ids written since the journal was last emptied."""
        return list(self._pending)

    def append(self, row_id: int) -> None:
        os.write(self._fd, b"%d\n" % row_id)
        self._pending.append(row_id)

    def clear(self) -> None:
        """Forget every id: call only once all of them are committed as sent."""
        os.ftruncate(self._fd, 0)
        self._pending.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
