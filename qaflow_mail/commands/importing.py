"""`import PATH... [--category SLUG] [--keep-subject-tag] [--json]`: mbox files, Maildir folders or .eml files
into a category, through the same pipeline as live mail (see qaflow_mail.importer)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from qaflow_mail.commands.common import CommandError, Subparsers, print_json, quiet_libraries
from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.deps import Deps
from qaflow_mail.importer import ImportReport, UnknownCategory, import_paths


def terminal_progress(stream: TextIO) -> Callable[[int, int], None]:
    """A one-line counter rewritten in place."""
    started = time.monotonic()

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        rate = done / max(time.monotonic() - started, 1e-6)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} messages ({rate:.0f}/s)")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


DEFAULT_CATEGORY = "general"


async def run_import(settings: Settings, paths: Sequence[str], *, category_slug: str,
                     progress: Callable[[int, int], None] | None, strip_subject_tag: bool = True) -> ImportReport:
    engine = create_engine(settings.database.url, echo=settings.database.echo)
    try:
        deps = Deps.build(settings, session_factory(engine))
        return await import_paths(deps, paths, category_slug=category_slug, progress=progress,
                                  strip_subject_tag=strip_subject_tag)
    finally:
        await engine.dispose()


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    quiet_libraries()
    progress = terminal_progress(sys.stderr) if sys.stderr.isatty() and not args.json else None
    category = args.category or DEFAULT_CATEGORY
    try:
        report = asyncio.run(run_import(settings, args.paths, category_slug=category, progress=progress,
                                        strip_subject_tag=args.strip_subject_tag))
    except UnknownCategory as exc:
        raise CommandError(f"{exc.args[0]}: add it first with `qaflow-mail category add`") from None
    if args.json:
        print_json({**report.to_dict(), "category_given": args.category is not None})
    else:
        chosen = "" if args.category else " (no --category given: the default)"
        print(f"category:     {report.category}{chosen}")
        print(f"messages:     {report.messages}")
        print(f"imported:     {report.imported}")
        print(f"duplicates:   {report.duplicates}")
        print(f"skipped:      {sum(report.skipped.values())}")
        for reason, count in report.skipped.items():
            print(f"  {count:6d}  {reason}")
        print(f"staged users: {report.staged_users}")
        for tag in report.stripped_tags:
            print(f"subject tag:  [{tag}] stripped (--keep-subject-tag keeps it)")
        for label, reason in report.skipped_messages:
            print(f"skipped:      {label}: {reason}")
        for problem in report.unreadable:
            print(f"unreadable:   {problem}")
    return 1 if report.unreadable else 0


def register(subparsers: Subparsers) -> None:
    imp = subparsers.add_parser("import", help="import mbox files, Maildir folders or .eml files into a category")
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("--category", default=None, help=f"category slug (default: {DEFAULT_CATEGORY})")
    tags = imp.add_mutually_exclusive_group()
    tags.add_argument("--strip-subject-tag", dest="strip_subject_tag", action="store_true", default=True,
                      help="strip a subject tag naming the list, such as [users@httpd] (the default)")
    tags.add_argument("--keep-subject-tag", dest="strip_subject_tag", action="store_false",
                      help="keep list tags in imported subjects")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(func=cmd_import)
