"""`db upgrade`: create or migrate the database schema."""

from __future__ import annotations

import argparse
import asyncio

from qaflow_mail.commands.common import Subparsers
from qaflow_mail.config import Settings


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from qaflow_mail.server.app import prepare_database  # the server stack loads only for the commands needing it

    asyncio.run(prepare_database(settings))
    print(f"database ready: {settings.database.url}")
    return 0


def register(subparsers: Subparsers) -> None:
    db = subparsers.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="create or migrate the schema").set_defaults(func=cmd_db_upgrade)
