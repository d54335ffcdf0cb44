"""`parse FILE... [--json]`: what the gateway would make of each message, without storing anything.

With --json one object per file and line, in order; a file that cannot be read gets a line with "error".
Exit status 0 when every file could be read (whatever it holds), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qaflow_mail.commands.common import Subparsers, quiet_libraries
from qaflow_mail.config import Settings
from qaflow_mail.corpus.describe import describe_message


def parse_file(path: Path, *, settings: Settings) -> dict[str, Any]:
    """The `parse --json` object of one file: the description, or "error" when it cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return {"file": str(path), "error": exc.strerror or str(exc)}
    try:
        return {"file": str(path), **describe_message(raw, settings=settings).to_json()}
    except Exception as exc:  # never expected (check-corpus counts 0 crashes); reported on the file's line
        return {"file": str(path), "error": f"could not be parsed: {type(exc).__name__}: {exc}"}


def _summary(obj: dict[str, Any]) -> str:
    lines = [str(obj["file"])]
    if "error" in obj:
        return f"{lines[0]}\n  error: {obj['error']}"
    lines += [
        f"  message-id: {obj['message_id']}",
        f"  from: {obj['from'] or '(none)'}",
        f"  subject: {obj['subject']}",
        f"  kind: {obj['kind']}",
    ]
    if obj["in_reply_to"]:
        lines.append(f"  in-reply-to: {obj['in_reply_to']}")
    if obj["references"]:
        lines.append(f"  references: {len(obj['references'])} id(s)")
    for att in obj["attachments"]:
        lines.append(f"  attachment: {att['name']} ({att['type']}, {att['size']} bytes)")
    if obj["bounce"] is not None:
        lines.append(f"  bounce: permanent {', '.join(obj['bounce']['permanent']) or '-'}; "
                     f"temporary {', '.join(obj['bounce']['temporary']) or '-'}")
    lines.append(f"  html: {'yes' if obj['html'] else 'no'}")
    lines.append("  body:")
    lines += [f"    | {line}" for line in (obj["body"] or "(empty)").splitlines()]
    return "\n".join(lines)


def cmd_parse(settings: Settings, args: argparse.Namespace) -> int:
    quiet_libraries()
    unreadable = False
    for name in args.files:
        obj = parse_file(Path(name), settings=settings)
        unreadable |= "error" in obj and not str(obj["error"]).startswith("could not be parsed")
        if args.json:
            # ASCII-escaped: U+2028, NEL and friends inside a body would otherwise split the line for some readers.
            print(json.dumps(obj, ensure_ascii=True), flush=True)
        else:
            # Lone surrogates (bytes no charset could read) cannot be printed as they are.
            print(_summary(obj).encode("utf-8", "replace").decode("utf-8") + "\n", flush=True)
    return 1 if unreadable else 0


def register(subparsers: Subparsers) -> None:
    parse = subparsers.add_parser("parse", help="what the gateway would make of each message (nothing stored)")
    parse.add_argument("files", nargs="+", metavar="FILE")
    parse.add_argument("--json", action="store_true", help="one JSON object per file and line")
    parse.set_defaults(func=cmd_parse)
