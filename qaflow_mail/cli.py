"""The qaflow-mail command line: the argument parser, wired from the command modules, and main()."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import IntegrityError

from qaflow_mail import __version__, logs
from qaflow_mail.commands import (
    announce,
    categories,
    corpus,
    database,
    digest,
    dns,
    imap,
    importing,
    moderation,
    outbox,
    parse,
    retention,
    serve,
    shunt,
    stats,
    subscriptions,
    topics,
    users,
)
from qaflow_mail.commands.common import CommandError, Subparsers
from qaflow_mail.commands.operator_errors import (
    CREATES_DATABASE_COMMANDS,
    NO_DATABASE_COMMANDS,
    explain,
    missing_database,
    quiet_broken_pipe,
)
from qaflow_mail.config import ConfigError, ensure_token_secret, find_config_path, load_settings
from qaflow_mail.db.installation import with_installation

# In the order `qaflow-mail --help` lists them.
COMMAND_GROUPS: tuple[Callable[[Subparsers], None], ...] = (
    database.register,  # db upgrade
    serve.register,  # serve, check-config
    categories.register,  # category add|list
    users.register,  # user add|list|show|set
    topics.register,  # topics, topic show
    subscriptions.register,  # subscribe, unsubscribe
    outbox.register,  # outbox [retry]
    shunt.register,  # shunt list|retry
    digest.register,  # digest run
    announce.register,  # announce send|status
    parse.register,  # parse
    importing.register,  # import
    corpus.register,  # check-corpus
    dns.register,  # dns [--check], dkim keygen
    retention.register,  # retention run [--dry-run]
    stats.register,  # stats [--json]
    imap.register,  # imap poll --once
    moderation.register,  # moderation list|approve|reject
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qaflow-mail", description="QAFlow Mail: the forum by email")
    parser.add_argument("--config", help="config file (else $QAFLOW_CONFIG, else config/qaflow.toml)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = None
    try:
        settings = load_settings(find_config_path(args.config, os.environ), os.environ)
        not_yet = missing_database(settings, args.command)
        if not_yet:
            raise CommandError(not_yet)
        if args.command not in NO_DATABASE_COMMANDS:  # those only read: nothing written to data_dir
            settings = ensure_token_secret(settings)
        if args.command not in NO_DATABASE_COMMANDS | CREATES_DATABASE_COMMANDS:  # `serve` reads it at start-up
            settings = asyncio.run(with_installation(settings))  # the Message-ID salt minted ids carry
        logs.configure(settings.logging.level, settings.logging.format)
        status: int = args.func(settings, args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return status
    except (CommandError, ConfigError) as exc:
        print(f"qaflow-mail: {exc}", file=sys.stderr)
        return 1
    except IntegrityError as exc:
        print(f"qaflow-mail: conflicts with existing data: {exc.orig}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    except Exception as exc:
        message = None if args.debug or settings is None else explain(exc, settings)
        if message is None:
            raise
        print(f"qaflow-mail: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
