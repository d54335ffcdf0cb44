"""Real-world mail from the command line.

- `parse FILE... [--json]`: what the gateway would make of each message, without storing anything. With
  --json one object per file and line, in order; a file that cannot be read gets a line with "error".
  Exit status 0 when every file could be read (whatever it holds), 1 otherwise.
- `import PATH... [--category SLUG] [--json]`: an mbox / Maildir / .eml archive into a category, through the
  same pipeline as live mail (see qaflow_mail.importer).
- `check-corpus DIR [--json]`: every message under DIR through parse, classification, routing, trimming and
  sanitising, without a server: messages, crashes, undecodable parts, time per message; and where DIR holds
  the answer keys of ../shared/corpora, trimming accuracy, threading agreement with notmuch and bounce
  detection. Exit status 1 when anything crashed or automatic mail would have been posted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from qaflow_mail.commands.common import CommandError, print_json
from qaflow_mail.config import Settings
from qaflow_mail.corpus import threading, trimming
from qaflow_mail.corpus.bounces import is_discourse_automatic, measure_flufl
from qaflow_mail.corpus.describe import Description, corpus_messages, describe_message
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.importer import ImportReport, UnknownCategory, import_paths
from qaflow_mail.mail.automatic import MailKind
from qaflow_mail.pipeline.deps import Deps

# flufl.bounce logs every detector it runs at INFO: noise on a terminal, thousands of lines over a corpus.
_CHATTY_LOGGERS = ("flufl.bounce",)


def _quiet_libraries() -> None:
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


# ------------------------------------------------------------------------------------------------------- parse


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
    _quiet_libraries()
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


# ------------------------------------------------------------------------------------------------------ import


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


async def run_import(settings: Settings, paths: Sequence[str], *, category_slug: str,
                     progress: Callable[[int, int], None] | None) -> ImportReport:
    engine = create_engine(settings.database.url, echo=settings.database.echo)
    try:
        deps = Deps.build(settings, session_factory(engine))
        return await import_paths(deps, paths, category_slug=category_slug, progress=progress)
    finally:
        await engine.dispose()


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    _quiet_libraries()
    progress = terminal_progress(sys.stderr) if sys.stderr.isatty() and not args.json else None
    try:
        report = asyncio.run(run_import(settings, args.paths, category_slug=args.category, progress=progress))
    except UnknownCategory as exc:
        raise CommandError(f"{exc.args[0]}: add it first with `qaflow-mail category add`") from None
    if args.json:
        print_json(report.to_dict())
    else:
        print(f"messages:     {report.messages}")
        print(f"imported:     {report.imported}")
        print(f"duplicates:   {report.duplicates}")
        print(f"skipped:      {sum(report.skipped.values())}")
        for reason, count in report.skipped.items():
            print(f"  {count:6d}  {reason}")
        print(f"staged users: {report.staged_users}")
        for problem in report.unreadable:
            print(f"unreadable:   {problem}")
    return 1 if report.unreadable else 0


# ------------------------------------------------------------------------------------------------ check-corpus


@dataclass(slots=True)
class CorpusCheck:
    root: str
    messages: int = 0
    crashes: list[str] = field(default_factory=list)
    undecodable_parts: int = 0
    guessed_charset_parts: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    trimming: dict[str, dict[str, Any]] = field(default_factory=dict)
    threading: dict[str, Any] = field(default_factory=dict)
    bounces: dict[str, Any] = field(default_factory=dict)
    discourse: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_per_message(self) -> float:
        return 1000.0 * self.seconds / self.messages if self.messages else 0.0

    @property
    def failed(self) -> bool:
        return bool(self.crashes or self.discourse.get("automatic_posted") or self.bounces.get("bounces_posted"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "messages": self.messages,
            "crashes": self.crashes,
            "undecodable_parts": self.undecodable_parts,
            "guessed_charset_parts": self.guessed_charset_parts,
            "ms_per_message": round(self.ms_per_message, 2),
            "kinds": dict(self.kinds),
            "trimming": self.trimming,
            "threading": self.threading,
            "bounces": self.bounces,
            "discourse": self.discourse,
        }


def _answer_key_root(root: Path, name: str) -> Path | None:
    """The folder holding the corpus `name`: DIR itself when DIR is that corpus, else DIR when it contains it."""
    if (root / name).is_dir():
        return root
    if root.name == name:
        return root.parent
    return None


def _trimming(check: CorpusCheck, root: Path) -> None:
    scorers: list[tuple[str, Callable[[Path], trimming.KeyScore]]] = [
        ("email_reply_trimmer", trimming.score_email_reply_trimmer),
        ("email_reply_trimmer", trimming.score_email_reply_trimmer_elided),
        ("email_reply_parser", trimming.score_email_reply_parser),
        ("talon", trimming.score_talon_standard),
        ("talon", trimming.score_talon_html),
    ]
    for corpus, scorer in scorers:
        base = _answer_key_root(root, corpus)
        if base is None:
            continue
        score = scorer(base)
        check.trimming[score.key] = {
            "total": score.total, "exact": score.exact, "normalized": score.normalized,
            "exact_ratio": round(score.exact_ratio, 4), "normalized_ratio": round(score.normalized_ratio, 4),
        }


def _pairs(counts: threading.PairCounts) -> dict[str, Any]:
    return {"both": counts.both, "ours": counts.ours, "reference": counts.reference,
            "precision": round(counts.precision, 4), "recall": round(counts.recall, 4), "f1": round(counts.f1, 4)}


def _threading(check: CorpusCheck, root: Path) -> None:
    folders = [root] if (root / "messages.tsv").is_file() else threading.reference_corpora(root)
    if not folders:
        return
    total, clean = threading.PairCounts(), threading.PairCounts()
    per_corpus: dict[str, Any] = {}
    for folder in folders:
        result = threading.evaluate_corpus(folder)
        total += result.counts
        clean += result.counts_without_junk
        per_corpus[result.corpus] = {"messages": len(result.units), **_pairs(result.counts)}
    check.threading = {"corpora": per_corpus, "overall": _pairs(total), "overall_without_junk": _pairs(clean)}


def _described(described: dict[str, Description], label: str) -> Description | None:
    """A file's description; a file that starts with an mbox "From " line was read as a one-message mbox."""
    return described.get(label) or described.get(f"{label}#1")


def _bounces(check: CorpusCheck, root: Path, described: dict[str, Description], settings: Settings) -> None:
    base = _answer_key_root(root, "flufl_bounce")
    if base is None:
        return
    folder = base / "flufl_bounce"
    figures = measure_flufl(folder)
    prefix = "" if root.name == "flufl_bounce" else "flufl_bounce/"
    posted = [name for name in figures.bounce_files
              if (d := _described(described, prefix + name)) is not None and d.kind is MailKind.POST]
    # The same files as they would arrive on our VERP address, judged as the record_bounce step judges them.
    verp = f"bounces+check@{settings.site.domain}"
    recorded = [describe_message((folder / name).read_bytes(), settings=settings, recipient=verp).bounce
                for name in figures.bounce_files]
    check.bounces = {
        "bounce_files": len(figures.bounce_files),
        "expected_addresses": figures.expected_addresses,
        "found_addresses": figures.found_addresses,
        "share_found": round(figures.share_found, 4),
        "bounces_posted": posted,
        "recorded_via_verp": sum(report is not None for report in recorded),
        "recorded_hard": sum(report is not None and bool(report.permanent) for report in recorded),
    }


def _discourse(check: CorpusCheck, root: Path, described: dict[str, Description]) -> None:
    if _answer_key_root(root, "discourse-emails") is None:
        return
    prefix = "" if root.name == "discourse-emails" else "discourse-emails/"
    names = [name for name in described if name.startswith(prefix) and name.partition("#")[0].endswith(".eml")]
    automatic = [name for name in names if is_discourse_automatic(name.partition("#")[0])]
    posted = [name for name in automatic if described[name].kind is MailKind.POST]
    crashed = [c for c in check.crashes if c.startswith(prefix)]
    check.discourse = {"files": len(names) + len(crashed), "automatic": len(automatic), "automatic_posted": posted,
                       "crashes": len(crashed)}


def check_corpus(root: Path, *, settings: Settings, clock: Callable[[], float] = time.perf_counter) -> CorpusCheck:
    """Run every message under `root` through describe_message, then score the answer keys it holds."""
    root = root.resolve()
    check = CorpusCheck(root=str(root))
    described: dict[str, Description] = {}
    for label, raw in corpus_messages(root):
        check.messages += 1
        started = clock()
        try:
            description = describe_message(raw, settings=settings)
        except Exception as exc:  # a crash is what this check exists to find and count
            check.crashes.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            described[label] = description
            check.undecodable_parts += description.parsed.undecodable_parts
            check.guessed_charset_parts += description.parsed.guessed_charset_parts
            check.kinds[description.kind.value] += 1
        check.seconds += clock() - started
    if root.is_dir():
        _trimming(check, root)
        _threading(check, root)
        _bounces(check, root, described, settings)
        _discourse(check, root, described)
    return check


def _print_check(check: CorpusCheck) -> None:
    print(f"corpus                {check.root}")
    print(f"messages              {check.messages}")
    print(f"crashes               {len(check.crashes)}")
    for crash in check.crashes:
        print(f"  {crash}")
    print(f"undecodable parts     {check.undecodable_parts}")
    print(f"charset-guessed parts {check.guessed_charset_parts}")
    print(f"ms per message        {check.ms_per_message:.2f}")
    print("kinds                 " + ", ".join(f"{kind} {n}" for kind, n in sorted(check.kinds.items())))
    if check.trimming:
        print("\ntrimming               exact            normalised")
        for key, score in check.trimming.items():
            print(f"  {key:<30} {score['exact']:>4}/{score['total']:<4} {score['exact_ratio']:>7.1%}"
                  f"   {score['normalized']:>4}/{score['total']:<4} {score['normalized_ratio']:>7.1%}")
    if check.threading:
        print("\nthreading vs notmuch   pairwise P / R / F1")
        for name, figures in check.threading["corpora"].items():
            print(f"  {name:<22} {figures['precision']:.4f} / {figures['recall']:.4f} / {figures['f1']:.4f}"
                  f"  ({figures['messages']} messages)")
        for label, key in (("overall", "overall"), ("overall w/o junk ids", "overall_without_junk")):
            figures = check.threading[key]
            print(f"  {label:<22} {figures['precision']:.4f} / {figures['recall']:.4f} / {figures['f1']:.4f}")
    if check.bounces:
        b = check.bounces
        print("\nbounces (flufl_bounce)")
        print(f"  failed addresses found {b['found_addresses']}/{b['expected_addresses']} = {b['share_found']:.1%}")
        print(f"  bounces posted         {len(b['bounces_posted'])} of {b['bounce_files']}")
        print(f"  recorded via VERP      {b['recorded_via_verp']}/{b['bounce_files']} ({b['recorded_hard']} hard)")
    if check.discourse:
        d = check.discourse
        print("\ndiscourse-emails")
        print(f"  files {d['files']}, crashes {d['crashes']}, automatic samples {d['automatic']}, "
              f"posted {len(d['automatic_posted'])}")
        for name in d["automatic_posted"]:
            print(f"    posted: {name}")


def cmd_check_corpus(settings: Settings, args: argparse.Namespace) -> int:
    _quiet_libraries()
    root = Path(args.dir)
    if not root.exists():
        raise CommandError(f"{root}: no such file or folder")
    check = check_corpus(root, settings=settings)
    if args.json:
        print_json(check.to_dict())
    else:
        _print_check(check)
    return 1 if check.failed else 0


# ---------------------------------------------------------------------------------------------------- register


def register(subparsers: Any) -> None:
    parse = subparsers.add_parser("parse", help="what the gateway would make of each message (nothing stored)")
    parse.add_argument("files", nargs="+", metavar="FILE")
    parse.add_argument("--json", action="store_true", help="one JSON object per file and line")
    parse.set_defaults(func=cmd_parse)

    imp = subparsers.add_parser("import", help="import mbox files, Maildir folders or .eml files into a category")
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("--category", default="general", help="category slug (default: general)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON")
    imp.set_defaults(func=cmd_import)

    check = subparsers.add_parser("check-corpus", help="run a folder of real mail through the gateway's checks")
    check.add_argument("dir", metavar="DIR")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check_corpus)
