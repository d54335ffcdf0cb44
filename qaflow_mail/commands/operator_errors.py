"""Operator mistakes as one line each: no database yet, a wrong URL, an unreachable server, a closed pipe."""

from __future__ import annotations

import errno
import os
import socket
import sys

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, ProgrammingError

from qaflow_mail.config import Settings, sqlite_path

UPGRADE_HINT = "run `qaflow-mail db upgrade` first"

# Top-level commands that never open the database, and those that create it.
NO_DATABASE_COMMANDS = frozenset({"parse", "check-corpus", "check-config", "dns", "dkim"})
CREATES_DATABASE_COMMANDS = frozenset({"db", "serve"})

# What binding a listener's socket fails with (the database is not involved).
_CANNOT_LISTEN = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})

_MISSING_SCHEMA_MARKERS = ("no such table", "does not exist", "undefinedtable")


def missing_database(settings: Settings, command: str) -> str | None:
    """Why `command` cannot run yet, when it reads a SQLite database that was never created (so nothing is
    created as a side effect of asking), else None."""
    if command in NO_DATABASE_COMMANDS or command in CREATES_DATABASE_COMMANDS:
        return None
    path = sqlite_path(settings)
    if path is not None and not path.exists():
        return f"no database at {path} yet: {UPGRADE_HINT}"
    return None


def _where(settings: Settings) -> str:
    try:
        url = make_url(settings.database.url)
    except ArgumentError:
        return "the database"
    if url.get_backend_name() == "sqlite":
        return f"the database {url.database}"
    return f"the database server {url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def explain(exc: BaseException, settings: Settings) -> str | None:
    """One line saying what the operator should do about `exc`, or None when it is not an operator mistake."""
    text = str(getattr(exc, "orig", None) or exc)
    lowered = (type(getattr(exc, "orig", exc)).__name__ + " " + text).lower()
    missing = any(m in lowered for m in _MISSING_SCHEMA_MARKERS) and ("relation" in lowered or "table" in lowered)
    if isinstance(exc, (OperationalError, ProgrammingError)) and missing:
        return f"{_where(settings)} has no schema (or an old one): {UPGRADE_HINT}"
    if isinstance(exc, (ArgumentError, NoSuchModuleError)):
        return f"[database] url is not usable: {exc}"
    if isinstance(exc, (ConnectionError, socket.gaierror, TimeoutError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return f"cannot reach {_where(settings)}: {text.splitlines()[0] if text else type(exc).__name__}"
    if isinstance(exc, OSError) and exc.errno in _CANNOT_LISTEN:
        return (f"cannot listen: {text.splitlines()[0] if text else exc.strerror}; another process holds the port "
                "(another `serve`?), or set another [smtp], [lmtp] or [http] port")
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"cannot reach {_where(settings)}: {exc.strerror}"
    if isinstance(exc, DBAPIError):
        first = text.splitlines()[0] if text else type(exc).__name__
        return f"database error on {_where(settings)}: {first}"
    name = type(exc).__name__
    if name.startswith("InvalidCatalogName") or name.startswith("InvalidPassword") or "authentication" in lowered:
        return f"cannot use {_where(settings)}: {text.splitlines()[0] if text else name}"
    return None


def quiet_broken_pipe() -> int:
    """stdout was closed by the reader (`qaflow-mail outbox | head -3`): stop quietly, as a Unix filter does.

    stdout is pointed at /dev/null so the interpreter's final flush does not raise a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return 141  # 128 + SIGPIPE, what a C filter killed by the closed pipe would return
