"""`qaflow-mail imap poll --once [--json]`: one pass over the [imap] mailbox, as the gateway's poller makes it.

Each unseen message goes through the same ingest as SMTP, then is marked processed (or moved to [imap]
processed_mailbox, or to failed_mailbox when it was shunted); see server/imap.py. Works with [imap] enabled
false too: a manual pass over a mailbox the running gateway does not poll.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import asdict

from qaflow_mail.commands.common import CommandError, Subparsers, print_json, with_deps
from qaflow_mail.config import Settings
from qaflow_mail.deps import Deps
from qaflow_mail.server.imap import ImapError, ImapPoller, PollCounts


async def _one_round(deps: Deps) -> PollCounts:
    poller = ImapPoller(deps)
    try:
        return await poller.poll_once()
    finally:
        await poller.stop()


def cmd_imap_poll(settings: Settings, args: argparse.Namespace) -> int:
    if not args.once:
        raise CommandError("only --once is supported here; `qaflow-mail serve` polls continuously when [imap] "
                           "enabled is true")
    if not settings.imap.username:
        raise CommandError("[imap] username is not set: nothing to log in with")
    imap = settings.imap
    try:
        counts = asyncio.run(with_deps(settings, _one_round))
    except (ImapError, TimeoutError, OSError) as exc:
        raise CommandError(f"IMAP {imap.host}:{imap.port} ({imap.mailbox}): {exc}") from None
    if args.json:
        print_json(asdict(counts))
    else:
        print(", ".join(f"{key} {value}" for key, value in asdict(counts).items()))
    return 0 if counts.failed == 0 else 1


def register(subparsers: Subparsers) -> None:
    imap = subparsers.add_parser("imap", help="the IMAP mailbox").add_subparsers(dest="imap_command", required=True)
    poll = imap.add_parser("poll", help="read the [imap] mailbox once and ingest what is unseen")
    poll.add_argument("--once", action="store_true", help="one pass, then exit")
    poll.add_argument("--json", action="store_true")
    poll.set_defaults(func=cmd_imap_poll)
