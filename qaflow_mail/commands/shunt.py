"""`qaflow-mail shunt list [--json]` shows the messages set aside after failing every attempt;
`qaflow-mail shunt retry ID` sends one through the pipeline again once its cause is fixed."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import asdict
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json, run_in_session, with_deps
from qaflow_mail.config import Settings
from qaflow_mail.deps import Deps
from qaflow_mail.pipeline.ingest import IngestResult, retry_shunted
from qaflow_mail.services.shunt import Shunted, describe, list_shunted


def _row(item: Shunted) -> dict[str, Any]:
    return {**asdict(item), "source": item.source.value, "received_at": iso(item.received_at)}


def cmd_shunt_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(session: AsyncSession) -> list[Shunted]:
        return await list_shunted(session)

    items = run_in_session(settings, work)
    if args.json:
        print_json([_row(item) for item in items])
        return 0
    if not items:
        print("nothing is shunted")
    for item in items:
        print(f"#{item.id:<6} {iso(item.received_at)}  from {item.from_address or '(none)'}  <{item.message_id}>")
        print(f"        {item.reason}")
    return 0


def cmd_shunt_retry(settings: Settings, args: argparse.Namespace) -> int:
    async def work(deps: Deps) -> IngestResult | None:
        try:
            return await retry_shunted(deps, args.id)
        except Exception as error:
            raise CommandError(f"shunt {args.id} failed again and stays shunted: {describe(error)}") from None

    result = asyncio.run(with_deps(settings, work))
    if result is None:
        raise CommandError(f"no shunted message {args.id} (see `qaflow-mail shunt list`)")
    print(f"shunt {args.id} sent through again: {result.reply}")
    return 0


def register(subparsers: Subparsers) -> None:
    shunt = subparsers.add_parser("shunt", help="messages set aside after failing every attempt")
    actions = shunt.add_subparsers(dest="shunt_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the shunted messages and their errors")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_shunt_list)
    retry = actions.add_parser("retry", help="send a shunted message through the pipeline again")
    retry.add_argument("id", type=int)
    retry.set_defaults(func=cmd_shunt_retry)
