"""`check-corpus DIR [--json]`: a folder of real mail through the gateway's checks (see qaflow_mail.corpus.check).

Exit status 1 when anything crashed or automatic mail would have been posted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qaflow_mail.commands.common import CommandError, Subparsers, print_json, quiet_libraries
from qaflow_mail.config import Settings
from qaflow_mail.corpus.check import CorpusCheck, check_corpus


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
    quiet_libraries()
    root = Path(args.dir)
    if not root.exists():
        raise CommandError(f"{root}: no such file or folder")
    check = check_corpus(root, settings=settings)
    if args.json:
        print_json(check.to_dict())
    else:
        _print_check(check)
    return 1 if check.failed else 0


def register(subparsers: Subparsers) -> None:
    check = subparsers.add_parser("check-corpus", help="run a folder of real mail through the gateway's checks")
    check.add_argument("dir", metavar="DIR")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check_corpus)
