"""Every message of a corpus folder through parse, classification, routing, trimming and sanitising, without a
server: messages, crashes, undecodable parts, time per message; and where the folder holds the answer keys of
../shared/corpora, trimming accuracy, threading agreement with notmuch and bounce detection."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qaflow_mail.config import Settings
from qaflow_mail.corpus import thread_eval, trimming
from qaflow_mail.corpus.bounces import is_discourse_automatic, measure_flufl
from qaflow_mail.corpus.describe import Description, corpus_messages, describe_message
from qaflow_mail.mail.automatic import MailKind


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


def _pairs(counts: thread_eval.PairCounts) -> dict[str, Any]:
    return {"both": counts.both, "ours": counts.ours, "reference": counts.reference,
            "precision": round(counts.precision, 4), "recall": round(counts.recall, 4), "f1": round(counts.f1, 4)}


def _threading(check: CorpusCheck, root: Path) -> None:
    folders = [root] if (root / "messages.tsv").is_file() else thread_eval.reference_corpora(root)
    if not folders:
        return
    total, clean = thread_eval.PairCounts(), thread_eval.PairCounts()
    per_corpus: dict[str, Any] = {}
    for folder in folders:
        result = thread_eval.evaluate_corpus(folder)
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
