"""Threading measured against notmuch on ../shared/corpora: pairwise P/R/F1 per corpus and every disagreement.

    python bench/corpus_threading.py [--order file|reverse|shuffle:SEED] [--live] [--adopt-nearer-parents]
                                     [--no-missing-parents]
                                     [--parents] [--quiet] [--corpora DIR]

Pairs are pairs of messages (one per Message-ID within a notmuch database) in the same thread. "vs notmuch" is
the answer key; "w/o junk" is notmuch's own rule (merge through every referenced id, delivered or not) with the
ids we refuse not followed, so the two columns separate the `<yes>`-style merges from everything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qaflow_mail.corpus.thread_eval import Cause, CorpusResult, Disagreement, PairCounts, evaluate_all

DEFAULT_CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"


def _figures(counts: PairCounts) -> str:
    if not counts.has_pairs:
        return f"{'no pairs':>24}"
    return f"{counts.precision:8.4f}{counts.recall:8.4f}{counts.f1:8.4f}"


def _row(
    name: str,
    files: int,
    messages: int,
    threads: tuple[int, int],
    counts: PairCounts,
    clean: PairCounts,
    parents: tuple[int, int],
) -> str:
    same, total = threads
    agree, judged = parents
    return (
        f"{name:<20}{files:>6}{messages:>6}{f'{same}/{total}':>10}"
        f"{counts.both:>8}{counts.ours:>8}{counts.reference:>8}{counts.either:>8}"
        f"{_figures(counts)}  |{_figures(clean)}  |{f'{agree}/{judged}':>9}"
    )


def _print_table(results: list[CorpusResult]) -> None:
    print(
        f"{'corpus':<20}{'files':>6}{'msgs':>6}{'same thr':>10}{'both':>8}{'ours':>8}{'notmuch':>8}{'either':>8}"
        f"{'P':>8}{'R':>8}{'F1':>8}  |{'P':>8}{'R':>8}{'F1':>8}  |{'parents':>9}"
    )
    print(f"{'':<42}{'------- pairs -------':>32}{'--- vs notmuch ---':>24}  |{'--- w/o junk ids ---':>24}  |")
    total, clean = PairCounts(), PairCounts()
    files = messages = same = threads = agree = judged = 0
    for r in results:
        print(
            _row(
                r.corpus,
                r.files,
                len(r.units),
                r.threads_identical,
                r.counts,
                r.counts_without_junk,
                r.parents_agreeing,
            )
        )
        total += r.counts
        clean += r.counts_without_junk
        files += r.files
        messages += len(r.units)
        same += r.threads_identical[0]
        threads += r.threads_identical[1]
        agree += r.parents_agreeing[0]
        judged += r.parents_agreeing[1]
    print(_row("overall", files, messages, (same, threads), total, clean, (agree, judged)))
    missed = {cause: sum(r.missed[cause] for r in results) for cause in Cause}
    check = PairCounts()
    for r in results:
        check += r.notmuch_rule_check
    print()
    print("pairs notmuch joins and we do not, by cause: " + ", ".join(f"{c}: {n}" for c, n in missed.items()))
    print(f"pairs we join and notmuch does not: {total.ours - total.both}")
    print(
        "notmuch's rule re-implemented (merge through every referenced id) against the answer key: "
        f"P={check.precision:.4f} R={check.recall:.4f} ({check.both}/{check.reference} pairs)"
    )


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_disagreement(d: Disagreement, delivered: set[str]) -> None:
    causes = ", ".join(f"{c}: {n} pairs" for c, n in d.causes.items()) or "not explained"
    print(f"  [{d.label}] {d.kind} into {len(d.groups)} groups ({causes})")
    if Cause.JUNK_ID in d.causes:
        print(f"    junk ids notmuch followed: {', '.join('<' + m + '>' for m in d.junk_ids)}")
    if Cause.UNSEEN_ANCESTOR in d.causes:
        shared = d.shared_unseen_ids(delivered)
        print(f"    never-delivered ids shared across groups: {', '.join('<' + m + '>' for m in shared)}")
    for group in d.groups:
        head = group[0]
        topic = head.our_topic if d.kind == "split" else head.reference_thread
        print(f"    - {len(group)} message(s), {'our topic' if d.kind == 'split' else 'notmuch thread'} {topic}")
        for u in group[:4]:
            print(f"        <{u.reference_id}> {_short(u.subject, 70)!r}")
        if len(group) > 4:
            print(f"        … {len(group) - 4} more")


def _print_details(results: list[CorpusResult], *, show_parents: bool) -> None:
    for r in results:
        if show_parents and r.parents_agreeing[0] != r.parents_agreeing[1]:
            print(f"\n{r.corpus}: parents that differ from parents.tsv")
        notes = []
        if r.duplicates:
            notes.append(f"{r.duplicates} repeated Message-IDs stored once")
        if r.skipped:
            notes.append(f"{len(r.skipped)} files notmuch refused (skipped.tsv), not threaded")
        if not (r.disagreements or r.id_mismatches or r.parse_failures or notes):
            continue
        print(f"\n{r.corpus}: " + "; ".join(notes))
        for label, file, reason in r.skipped:
            print(f"  skipped {label}/{file}: {reason}")
        for failure in r.parse_failures:
            print(
                f"  parse_message raised on {failure.entry.label}/{failure.entry.file} ({failure.error}); "
                "threaded from its compat32 headers"
            )
        for entry, ours in r.id_mismatches:
            if ours.startswith("notmuch-sha1-"):
                found = "parse.py finds no usable Message-ID (synthesised; mirrored here as notmuch's sha1 id)"
            else:
                found = f"parse.py <{ours}>"
            print(f"  id differs {entry.label}/{entry.file}: notmuch <{entry.message_id}>, {found}")
        for d in r.disagreements:
            delivered = {u.our_id for u in r.units if u.label == d.label}
            _print_disagreement(d, delivered)
        if show_parents:
            for u in r.units:
                if u.reference_parent != u.our_parent:
                    print(
                        f"  parent of <{u.reference_id}> [{u.label}]: notmuch <{u.reference_parent}>, "
                        f"ours <{u.our_parent}>; In-Reply-To {', '.join(u.in_reply_to) or '-'}"
                    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--order", default="file", help="arrival order: file, reverse or shuffle:SEED")
    parser.add_argument("--live", action="store_true", help="no orphan re-attachment (live ingest, not import)")
    parser.add_argument(
        "--adopt-nearer-parents",
        action="store_true",
        help="move a message under a nearer ancestor that arrives late (parents only)",
    )
    parser.add_argument(
        "--no-missing-parents",
        action="store_true",
        help="do not join messages that share a missing ancestor (the behaviour before that was added)",
    )
    parser.add_argument("--parents", action="store_true", help="also list parents that differ from parents.tsv")
    parser.add_argument("--quiet", action="store_true", help="figures only, no disagreement list")
    args = parser.parse_args(argv)
    if not args.corpora.is_dir():
        print(f"no corpora at {args.corpora}", file=sys.stderr)
        return 2
    results = evaluate_all(
        args.corpora,
        order=args.order,
        reattach_orphans=not args.live,
        adopt_nearer_parents=args.adopt_nearer_parents,
        join_missing_parents=not args.no_missing_parents,
    )
    mode = "live ingest (no re-attachment)" if args.live else "import (orphans re-attached)"
    joining = "" if args.no_missing_parents else "; replies sharing a missing parent joined"
    print(f"threading vs notmuch 0.37 answer keys; arrival order: {args.order}; {mode}{joining}\n")
    _print_table(results)
    if not args.quiet:
        _print_details(results, show_parents=args.parents)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
