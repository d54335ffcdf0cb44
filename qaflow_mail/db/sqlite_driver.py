"""SQLAlchemy's aiosqlite adapter with one trip to the database thread per statement instead of four.

aiosqlite runs every call of the sqlite3 module in a thread of its own and hands each result back to the event
loop. SQLAlchemy's adapter makes four such calls for every statement (open a cursor, execute, fetch the rows,
close the cursor); each costs the event loop a future, a wake-up through its self-pipe and a task step, and the
statement waits for four thread handovers. Here one function does all four on the database thread and hands
back the description, the row count, the last row id and the rows together. Server-side cursors (streaming
results) keep SQLAlchemy's own class.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, int, int | None, list[Any] | None]


def _execute_on_database_thread(connection: sqlite3.Connection, operation: str, parameters: Any,
                                many: bool) -> _Outcome:
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose execute is one call on the database thread; the rows are held here."""

    # Plain attributes in place of the base class's properties, which read an aiosqlite cursor this class never
    # opens (opening one is a trip of its own).
    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self.description: Any = None
        self.rowcount: int = -1
        self.lastrowid: Any = None
        self.arraysize = 1

    async def _async_soft_close(self) -> None:
        return None  # nothing is open on the database thread between calls

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._run(operation, parameters, many=False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        try:
            return await_(self._run(operation, seq_of_parameters, many=True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _run(self, operation: str, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        on_database_thread = cast(Callable[..., Awaitable[_Outcome]], connection._execute)
        async with self._adapt_connection._execute_mutex:
            outcome = await on_database_thread(
                _execute_on_database_thread, connection._conn, operation, parameters, many)
        self.description, self.rowcount, self.lastrowid, rows = outcome
        self._rows = collections.deque(rows or ())

    def nextset(self) -> None:
        self._rows.clear()  # sqlite3 has one result set per statement


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module SQLAlchemy's aiosqlite dialect is given (`module=`), connecting with OneTripConnection."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        creator = kw.pop("async_creator_fn", None)
        connection = creator(*arg, **kw) if creator else self.aiosqlite.connect(*arg, **kw)
        if not creator:
            connection._thread.daemon = True  # as SQLAlchemy's adapter: a forgotten connection never blocks exit
        return OneTripConnection(self, await_(connection))


def one_trip_dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
