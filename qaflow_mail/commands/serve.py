"""`serve` runs the gateway until SIGTERM/SIGINT; `check-config` prints the settings it would run with."""

from __future__ import annotations

import argparse
import asyncio

from qaflow_mail.commands.common import Subparsers, print_json
from qaflow_mail.config import Settings, redacted


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from qaflow_mail.server.app import serve  # the server stack loads only for the commands needing it

    print(
        f"QAFlow Mail: SMTP on {settings.smtp.host}:{settings.smtp.port}, domain {settings.site.domain}, "
        f"database {settings.database.url}. Ctrl-C stops.",
        flush=True,
    )
    asyncio.run(serve(settings))
    return 0


def cmd_check_config(settings: Settings, args: argparse.Namespace) -> int:
    print_json(redacted(settings))
    return 0


def register(subparsers: Subparsers) -> None:
    subparsers.add_parser("serve", help="run the gateway until SIGTERM/SIGINT").set_defaults(func=cmd_serve)
    subparsers.add_parser("check-config", help="print the effective config, secrets redacted").set_defaults(
        func=cmd_check_config)
