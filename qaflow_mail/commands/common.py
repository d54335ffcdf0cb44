"""What the command modules share: one-transaction runs, reading input files, printing, user errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.deps import Deps
from qaflow_mail.services.bulk_import import BulkReport
from qaflow_mail.services.categories import UnknownCategory
from qaflow_mail.services.users import UnknownUser

# flufl.bounce logs every detector it runs at INFO: noise on a terminal, thousands of lines over a corpus.
_CHATTY_LOGGERS = ("flufl.bounce",)

# What `add_subparsers()` returns; each command module's register() adds its commands to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

T = TypeVar("T")

MAX_BAD_LINES_SHOWN = 20


class CommandError(Exception):
    """A user error: printed as one line, exit status 1."""


def quiet_libraries() -> None:
    """Libraries that log every step at INFO: WARNING and above only (for commands reading much mail)."""
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def read_input(path: str) -> str:
    """The text of ``path``, or of stdin for ``-``: UTF-8, a BOM tolerated, undecodable bytes as U+FFFD."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data.decode("utf-8-sig", errors="replace")


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


def print_bulk_report(report: BulkReport, *, as_json: bool, subscribing: bool) -> None:
    """The outcome of `user add --file` or `subscribe --file`: a summary line, and the bad lines on stderr."""
    if as_json:
        print_json(report.as_dict())
        return
    parts = [f"{report.lines} line(s), {report.addresses} address(es)",
             f"users: {report.users_created} created, {report.users_existing} existing"]
    if subscribing:
        parts.append(f"subscriptions: {report.subscriptions_created} created, "
                     f"{report.subscriptions_existing} existing (kept)")
    if report.duplicates:
        parts.append(f"{report.duplicates} duplicate(s) ignored")
    parts.append(f"{len(report.bad)} bad line(s)")
    print("; ".join(parts))
    for bad in report.bad[:MAX_BAD_LINES_SHOWN]:
        print(f"  line {bad.line}: {bad.reason}: {bad.text}", file=sys.stderr)
    if len(report.bad) > MAX_BAD_LINES_SHOWN:
        print(f"  ... and {len(report.bad) - MAX_BAD_LINES_SHOWN} more (use --json for all)", file=sys.stderr)


async def in_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction on a short-lived engine."""
    engine = create_engine(settings.database.url)
    try:
        async with session_factory(engine)() as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


def run_in_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    return asyncio.run(in_session(settings, work))


async def with_deps(settings: Settings, work: Callable[[Deps], Awaitable[T]]) -> T:
    """Run `work` with the gateway's dependencies on a short-lived engine (for commands that ingest or publish)."""
    engine = create_engine(settings.database.url)
    try:
        return await work(Deps.build(settings, session_factory(engine)))
    finally:
        await engine.dispose()


def unknown_user(exc: UnknownUser) -> CommandError:
    return CommandError(f"{exc} (add one with `qaflow-mail user add EMAIL`)")


async def explained(work: Awaitable[T]) -> T:
    """``work``, with an unknown user or category turned into the command's one-line error."""
    try:
        return await work
    except UnknownUser as exc:
        raise unknown_user(exc) from None
    except UnknownCategory as exc:
        raise CommandError(f"{exc} (see `qaflow-mail category list`)") from None
