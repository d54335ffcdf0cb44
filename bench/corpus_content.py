"""The content layer on ../shared/corpora: every message parsed and its content extracted, then trimming
accuracy on each answer key.

    python bench/corpus_content.py [CORPORA_DIR] [--failures]

Prints messages, crashes (must be 0), undecodable / charset-guessed parts and ms per message, then for
email_reply_trimmer (exact after .strip(), like upstream), email_reply_parser (the visible-text and timing
assertions upstream states) and talon (standard_replies, html_replies) the exact and whitespace-normalised
scores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qaflow_mail.corpus.trimming import KeyScore, score_all, sweep

DEFAULT_CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"


def _score_line(score: KeyScore) -> str:
    return (
        f"{score.key:<32}{f'{score.exact}/{score.total}':>8}{score.exact_ratio:>8.1%}"
        f"{f'{score.normalized}/{score.total}':>10}{score.normalized_ratio:>8.1%}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("corpora", nargs="?", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--failures", action="store_true", help="list the cases each answer key fails")
    args = parser.parse_args(argv)
    root: Path = args.corpora.resolve()
    if not root.is_dir():
        print(f"corpora not found: {root}", file=sys.stderr)
        return 2

    figures = sweep(root)
    print(f"messages              {figures.messages}")
    print(f"crashes               {len(figures.crashes)}")
    for label, error in figures.crashes:
        print(f"  {label}: {error}")
    print(f"undecodable parts     {figures.undecodable_parts}")
    print(f"charset-guessed parts {figures.guessed_charset_parts}")
    print(f"empty visible replies {figures.empty_bodies}")
    print(f"ms per message        {figures.ms_per_message:.2f}  ({figures.seconds:.2f} s in all)")
    print()
    print(f"{'answer key':<32}{'exact':>16}{'normalised':>18}")
    for score in score_all(root):
        print(_score_line(score))
        if args.failures:
            for name in score.failures:
                print(f"    fails: {name}")
    return 1 if figures.crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
