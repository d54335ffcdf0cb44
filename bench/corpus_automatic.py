"""Automatic-mail recognition and bounce reading measured on ../shared/corpora.

    python bench/corpus_automatic.py [--verbose] [--corpora DIR]

flufl_bounce: share of the expected failed addresses read_bounce finds (target >= 95 %), bounces that
classify_automatic would let through as posts (must be 0), agreement of hard/soft with the stated kinds.
discourse-emails: crashes (must be 0), automatic samples classified POST (must be 0), and every file that is
held back. Other corpora: crashes (must be 0) and the verdicts counted by reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qaflow_mail.corpus.bounces import is_discourse_automatic, measure_discourse, measure_flufl, sweep
from qaflow_mail.mail.automatic import MailKind

DEFAULT_CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"


def _list(title: str, items: tuple[str, ...] | list[str]) -> None:
    print(f"  {title}: {len(items)}")
    for item in items:
        print(f"    {item}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--verbose", action="store_true", help="print the verdict of every discourse file")
    args = parser.parse_args(argv)
    root: Path = args.corpora.resolve()
    if not (root / "flufl_bounce" / "expected.json").is_file():
        print(f"shared corpora not present: {root}", file=sys.stderr)
        return 2
    failed = False

    started = time.perf_counter()
    flufl = measure_flufl(root / "flufl_bounce")
    print(f"flufl_bounce ({flufl.files} files, {time.perf_counter() - started:.2f} s)")
    print(f"  expected addresses found: {flufl.found_addresses}/{flufl.expected_addresses} = {flufl.share_found:.2%}")
    print(f"  bounces in the key: {len(flufl.bounce_files)}")
    print(f"  bounces posted: {len(flufl.bounces_posted)}")
    print(f"  hard/soft as stated: {flufl.kind_agreed}/{flufl.kind_checked}")
    _list("bounces classified other than BOUNCE", flufl.bounces_not_bounce)
    _list("bounces read_bounce did not read", flufl.not_read)
    _list("missing addresses", flufl.missing_addresses)
    _list("hard/soft disagreements", flufl.kind_disagreements)
    _list("files the key does not call bounces", flufl.non_bounce_verdicts)
    _list("crashes", flufl.crashes)
    failed |= bool(flufl.bounces_posted or flufl.crashes) or flufl.share_found < 0.95

    started = time.perf_counter()
    discourse = measure_discourse(root / "discourse-emails")
    print(f"\ndiscourse-emails ({discourse.files} files, {time.perf_counter() - started:.2f} s)")
    print(f"  automatic samples: {len(discourse.automatic)}")
    _list("automatic samples posted", discourse.automatic_posted)
    _list("crashes", discourse.crashes)
    held = [
        f"{c.name}: {c.verdict.kind} ({c.verdict.reason})"
        + ("" if is_discourse_automatic(c.name) else "   <- not an automatic sample")
        for c in discourse.verdicts
        if c.verdict is not None and c.verdict.kind is not MailKind.POST
    ]
    _list("held back", held)
    if args.verbose:
        _list(
            "posts",
            [c.name for c in discourse.verdicts if c.verdict is not None and c.verdict.kind is MailKind.POST],
        )
    failed |= bool(discourse.automatic_posted or discourse.crashes)

    started = time.perf_counter()
    other = sweep(root)
    print(f"\nother corpora ({other.messages} messages, {time.perf_counter() - started:.2f} s)")
    _list("crashes", other.crashes)
    print("  verdicts by reason:")
    for reason, count in other.by_reason.items():
        print(f"    {count:5d}  {reason}")
    failed |= bool(other.crashes)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
