"""The async engine and session factory (schema upgrades: `db.migrate`).

Durability, per backend (what a `250` promises):
- SQLite: WAL with `synchronous=FULL`: every commit is fsynced to the WAL before it returns, so a committed
  message survives a power loss, not only a crash of the process (with NORMAL a commit could be lost).
- PostgreSQL: the server's own `synchronous_commit` (on by default) fsyncs the WAL at commit.

Bounded waits: a statement, a lock wait and the wait for a pooled connection each give up after
[database] statement_timeout, opening a connection after connect_timeout; the error is a temporary one (→ 451).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from qaflow_mail.config import DatabaseSettings
from qaflow_mail.db.sqlite_driver import one_trip_dbapi


def prepare_sqlite_path(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


DEFAULT_STATEMENT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
# asyncpg's own timer fires a little after the server's statement_timeout, for a server that no longer answers.
_CLIENT_TIMEOUT_MARGIN = 2.0


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
        cursor.close()

    return apply


def create_engine(
    url: str, *, echo: bool = False, statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncEngine:
    prepare_sqlite_path(url)
    options: dict[str, Any] = {"pool_timeout": statement_timeout}
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        options["pool_pre_ping"] = True
        options["connect_args"] = {
            "timeout": connect_timeout,
            "command_timeout": statement_timeout + _CLIENT_TIMEOUT_MARGIN,
            "server_settings": {
                "statement_timeout": str(int(statement_timeout * 1000)),
            },
        }
    if parsed.drivername == "sqlite+aiosqlite":
        options["module"] = one_trip_dbapi()
    engine = create_async_engine(url, echo=echo, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(int(statement_timeout * 1000)))
    return engine


def create_engine_for(database: DatabaseSettings) -> AsyncEngine:
    """The engine for [database], with its timeouts."""
    return create_engine(database.url, echo=database.echo, statement_timeout=database.statement_timeout,
                         connect_timeout=database.connect_timeout)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)

