"""The qaflow-mail command line: the argument parser, wired from the command modules, and main()."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import IntegrityError

from qaflow_mail import logs
from qaflow_mail.commands import (
    announce,
    categories,
    corpus,
    database,
    digest,
    importing,
    outbox,
    parse,
    serve,
    shunt,
    subscriptions,
    topics,
    users,
)
from qaflow_mail.commands.common import CommandError, Subparsers
from qaflow_mail.config import ConfigError, ensure_token_secret, find_config_path, load_settings

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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qaflow-mail", description="QAFlow Mail: the forum by email")
    parser.add_argument("--config", help="config file (else $QAFLOW_CONFIG, else config/qaflow.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(find_config_path(args.config, os.environ), os.environ)
        settings = ensure_token_secret(settings)
        logs.configure(settings.logging.level, settings.logging.format)
        status: int = args.func(settings, args)
        return status
    except (CommandError, ConfigError) as exc:
        print(f"qaflow-mail: {exc}", file=sys.stderr)
        return 1
    except IntegrityError as exc:
        print(f"qaflow-mail: conflicts with existing data: {exc.orig}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
