"""Topic freshness remembered on this node, trusted only while the database says nothing was committed since.

On SQLite, ``PRAGMA data_version`` read on a connection of our own (which never writes) changes whenever any other
connection commits: this process's pool, another node on the same file, the command line. One call in the event
loop's thread, a few microseconds, answers "has anything at all changed?"; when it has, everything remembered is
dropped and each topic's freshness is read again on its next request. The call never waits: the connection has
no busy timeout, and in WAL mode (which the engine sets) a reader does not wait for writers; should it fail
anyway (busy during a recovery, the file gone), nothing is trusted for that request and the query runs.

On PostgreSQL there is no such cheap signal: every request reads the freshness (one small query).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from sqlalchemy.engine import make_url

from qaflow_mail.services.topics import TopicFreshness

MAX_TOPICS = 4096
K = TypeVar("K")
V = TypeVar("V")


class Unknown(Enum):
    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


class CommitWatch:
    """``PRAGMA data_version`` of one SQLite file, on a read-only-by-use connection opened on first use."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None

    @classmethod
    def for_url(cls, url: str) -> CommitWatch | None:
        """A watch for a SQLite file database; None for PostgreSQL and in-memory SQLite."""
        parsed = make_url(url)
        database = parsed.database
        if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or parsed.query:
            return None
        return cls(database)

    def version(self) -> int | None:
        """A number that differs from the last one whenever anyone else committed since; None: cannot tell now."""
        try:
            if self._connection is None:
                self._connection = sqlite3.connect(self._path, timeout=0, isolation_level=None,
                                                   check_same_thread=False)
            row = self._connection.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            self.close()
            return None
        return int(row[0])

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass(frozen=True, slots=True)
class Recalled(Generic[V]):
    """What a memo knows of a key at ``version``: the value read, or UNKNOWN."""

    version: int | None
    value: V | Unknown


class CommitMemo(Generic[K, V]):
    """Values read from the database (a topic's freshness, a listing page's rows), by key, valid until the next
    commit by anyone.

    An entry is only stored under the version read before its query ran, so it is never older than that version;
    any later commit changes the version and drops everything.
    """

    def __init__(self, watch: CommitWatch | None, max_entries: int) -> None:
        self._watch = watch
        self._max_entries = max_entries
        self._version: int | None = None
        self._known: dict[K, V] = {}

    def recall(self, key: K) -> Recalled[V]:
        version = self._watch.version() if self._watch is not None else None
        if version != self._version or version is None:
            self._known.clear()
            self._version = version
        if version is None or key not in self._known:
            return Recalled(version=version, value=UNKNOWN)
        return Recalled(version=version, value=self._known[key])

    def remember(self, recalled: Recalled[V], key: K, value: V) -> None:
        if recalled.version is None or recalled.version != self._version:
            return  # someone committed while the query ran: the next request reads again
        if len(self._known) >= self._max_entries:
            self._known.clear()
        self._known[key] = value

    def close(self) -> None:
        self._known.clear()
        if self._watch is not None:
            self._watch.close()


# A topic's freshness (None: not visible), by topic id; a listing page's rows, by (page kind, slug, number).
FreshnessMemo = CommitMemo[int, TopicFreshness | None]
ListingMemo = CommitMemo[tuple[object, ...], object]
MAX_LISTINGS = 256
