"""Measure automatic-mail recognition and bounce reading against the corpora in ../shared/corpora.

- `flufl_bounce/`: 117 real bounces and a few non-bounces with `expected.json` (the addresses flufl.bounce's
  own tests state, and what flufl.bounce 6.0.0 returns for every file). We count the share of expected
  addresses `read_bounce` finds, the bounces `classify_automatic` would let through as posts (must be 0),
  and whether the permanent/temporary split agrees with the stated detector kinds.
- `discourse-emails/`: Discourse's receiver fixtures. The auto-generated, auto-reply, bounce and loop
  samples must never be classified POST, and no file may crash the classifier.
- the other corpora (real list and personal mail, mboxes split into messages): crashes, and the verdicts
  counted by reason, to see what ordinary mail is held back and why.

Every file is classified as it would arrive over IMAP to a reply address: no SMTP envelope (the Return-Path
header stands in for it) and not on the bounce address, the hardest case for bounces.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qaflow_mail.mail.automatic import MailKind, Verdict, classify_automatic
from qaflow_mail.mail.bounces import read_bounce
from qaflow_mail.mail.parse import parse_message

# What a deployment would pass; none of the corpus mail was sent by us, so no loop should be reported.
OUR_DOMAIN = "qaflow.localhost"
OUR_LIST_ID_SUFFIX = "." + OUR_DOMAIN  # as guard_loops passes it
MAX_RECEIVED = 30

# Discourse fixtures that are automatic mail by their name or by their content (the fixture README points to
# expectations we do not have; these are the files its receiver spec treats as auto-generated or bounced).
_DISCOURSE_AUTOMATIC_NAME_RE = re.compile(r"auto_generated|auto_reply|bounce")
_DISCOURSE_AUTOMATIC_FILES = frozenset(
    {
        "email_to_group_email_username_auto_generated.eml",  # From: noreply@…
        "invalid_from_2.eml",  # MAILER-DAEMON "Undelivered Mail Returned to Sender"
    }
)


@dataclass(frozen=True, slots=True)
class Classified:
    name: str
    verdict: Verdict | None  # None when the classifier raised
    error: str = ""


@dataclass(frozen=True, slots=True)
class FluflFigures:
    files: int
    bounce_files: tuple[str, ...]  # the files the key marks as bounces
    bounces_posted: tuple[str, ...]  # key bounces classified POST (must be empty)
    bounces_not_bounce: tuple[str, ...]  # key bounces classified AUTO_REPLY or LOOP, with the reason
    not_read: tuple[str, ...]  # key bounces for which read_bounce returned None
    expected_addresses: int
    found_addresses: int
    missing_addresses: tuple[str, ...]  # "file: address"
    kind_checked: int  # addresses with a stated permanent/temporary kind that we found
    kind_agreed: int
    kind_disagreements: tuple[str, ...]
    non_bounce_verdicts: tuple[str, ...]  # "file: kind (reason)" for files the key does not call bounces
    crashes: tuple[str, ...]

    @property
    def share_found(self) -> float:
        return self.found_addresses / self.expected_addresses if self.expected_addresses else 1.0


@dataclass(frozen=True, slots=True)
class DiscourseFigures:
    files: int
    automatic: tuple[str, ...]  # the samples that must not be POST
    automatic_posted: tuple[str, ...]  # must be empty
    crashes: tuple[str, ...]
    verdicts: tuple[Classified, ...]


@dataclass(frozen=True, slots=True)
class SweepFigures:
    messages: int
    crashes: tuple[str, ...]
    by_reason: dict[str, int] = field(default_factory=dict)  # "kind: reason" -> count


def classify_raw(raw: bytes, *, envelope_from: str | None = None) -> Verdict:
    return classify_automatic(
        parse_message(raw),
        raw,
        envelope_from=envelope_from,
        our_domain=OUR_DOMAIN,
        our_list_id_suffix=OUR_LIST_ID_SUFFIX,
        max_received=MAX_RECEIVED,
        is_bounce_address=False,
    )


def _safe_classify(name: str, raw: bytes) -> Classified:
    try:
        return Classified(name, classify_raw(raw))
    except Exception as exc:  # counted and reported, never hidden
        return Classified(name, None, f"{type(exc).__name__}: {exc}")


def _expected(entry: dict[str, object]) -> tuple[set[str], dict[str, str], bool]:
    """(expected addresses, stated kind per address, is a bounce) for one answer-key entry."""
    addresses: set[str] = set()
    kinds: dict[str, str] = {}
    stated = entry.get("stated_detectors")
    for detector in stated if isinstance(stated, list) else []:
        for address in detector.get("addresses", []):
            addresses.add(address.lower())
            kinds[address.lower()] = str(detector.get("kind", ""))
    reference = entry.get("reference_flufl_bounce_6_0_0")
    if isinstance(reference, dict):
        addresses.update(a.lower() for a in reference.get("scan_message", []))
        failures = reference.get("all_failures", {})
        for kind in ("temporary", "permanent"):
            for address in failures.get(kind, []):
                addresses.add(address.lower())
                kinds.setdefault(address.lower(), kind)
    scan = entry.get("stated_scan")
    note = str(scan.get("note", "")) if isinstance(scan, dict) else ""
    is_bounce = bool(addresses) or "bounce" in note.lower()
    return addresses, kinds, is_bounce


def measure_flufl(corpus: Path) -> FluflFigures:
    key = json.loads((corpus / "expected.json").read_text(encoding="utf-8"))["files"]
    bounce_files: list[str] = []
    posted: list[str] = []
    not_bounce: list[str] = []
    not_read: list[str] = []
    missing: list[str] = []
    disagreements: list[str] = []
    non_bounce: list[str] = []
    crashes: list[str] = []
    expected_total = found_total = kind_checked = kind_agreed = 0
    for name in sorted(key):
        raw = (corpus / name).read_bytes()
        addresses, kinds, is_bounce = _expected(key[name])
        classified = _safe_classify(name, raw)
        try:
            report = read_bounce(raw)
        except Exception as exc:
            crashes.append(f"{name}: read_bounce {type(exc).__name__}: {exc}")
            report = None
        if classified.verdict is None:
            crashes.append(f"{name}: {classified.error}")
        verdict = classified.verdict
        if not is_bounce:
            if verdict is not None:
                non_bounce.append(f"{name}: {verdict.kind} ({verdict.reason})")
            continue
        bounce_files.append(name)
        if verdict is not None and verdict.kind is MailKind.POST:
            posted.append(name)
        elif verdict is not None and verdict.kind is not MailKind.BOUNCE:
            not_bounce.append(f"{name}: {verdict.kind} ({verdict.reason})")
        if report is None:
            not_read.append(name)
        found = report.addresses if report is not None else frozenset()
        for address in sorted(addresses):
            expected_total += 1
            if address not in found:
                missing.append(f"{name}: {address}")
                continue
            found_total += 1
            stated_kind = kinds.get(address)
            if report is not None and stated_kind in {"permanent", "temporary"}:
                kind_checked += 1
                ours = "permanent" if address in report.permanent else "temporary"
                if ours == stated_kind:
                    kind_agreed += 1
                else:
                    disagreements.append(f"{name}: {address} key {stated_kind}, ours {ours}")
    return FluflFigures(
        files=len(key),
        bounce_files=tuple(bounce_files),
        bounces_posted=tuple(posted),
        bounces_not_bounce=tuple(not_bounce),
        not_read=tuple(not_read),
        expected_addresses=expected_total,
        found_addresses=found_total,
        missing_addresses=tuple(missing),
        kind_checked=kind_checked,
        kind_agreed=kind_agreed,
        kind_disagreements=tuple(disagreements),
        non_bounce_verdicts=tuple(non_bounce),
        crashes=tuple(crashes),
    )


def is_discourse_automatic(name: str) -> bool:
    """True for the Discourse fixtures that are auto-generated, auto-replies, bounces or loops."""
    base = name.rsplit("/", 1)[-1]
    return bool(_DISCOURSE_AUTOMATIC_NAME_RE.search(base)) or base in _DISCOURSE_AUTOMATIC_FILES


def measure_discourse(corpus: Path) -> DiscourseFigures:
    paths = sorted(p for p in corpus.rglob("*.eml") if p.is_file())
    verdicts = [_safe_classify(p.relative_to(corpus).as_posix(), p.read_bytes()) for p in paths]
    automatic = [c.name for c in verdicts if is_discourse_automatic(c.name)]
    posted = [
        c.name
        for c in verdicts
        if is_discourse_automatic(c.name) and c.verdict is not None and c.verdict.kind is MailKind.POST
    ]
    crashes = [f"{c.name}: {c.error}" for c in verdicts if c.verdict is None]
    return DiscourseFigures(
        files=len(verdicts),
        automatic=tuple(automatic),
        automatic_posted=tuple(posted),
        crashes=tuple(crashes),
        verdicts=tuple(verdicts),
    )


_SWEEP_FOLDERS = ("notmuch", "talon", "cpython_email", "hyperkitty_testdata", "perceval_mboxes", "ponymail_asf_mboxes")
_NOT_MAIL_SUFFIXES = frozenset({".md", ".json", ".tsv", ".py", ".html", ".png", ".jpg", ".gif", ".pdf"})


def split_mbox(data: bytes) -> list[bytes]:
    """The messages of an mbox file, each without its "From " separator line (bytes kept as they are)."""
    messages: list[list[bytes]] = []
    previous_blank = True
    for line in data.splitlines(keepends=True):
        if line.startswith(b"From ") and previous_blank:
            messages.append([])
        elif messages:
            messages[-1].append(line)
        previous_blank = not line.strip()
    return [b"".join(lines) for lines in messages if any(line.strip() for line in lines)]


def _sweep_messages(root: Path) -> Iterator[tuple[str, bytes]]:
    for folder in _SWEEP_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            if path.suffix.lower() in _NOT_MAIL_SUFFIXES:
                continue
            name = path.relative_to(root).as_posix()
            if path.suffix.lower() == ".mbox":
                for index, message in enumerate(split_mbox(path.read_bytes()), start=1):
                    yield f"{name}#{index}", message
            else:
                yield name, path.read_bytes()


def sweep(root: Path) -> SweepFigures:
    """Classify every message of the other corpora: none may crash; the verdicts are counted by reason."""
    crashes: list[str] = []
    reasons: Counter[str] = Counter()
    count = 0
    for name, raw in _sweep_messages(root):
        count += 1
        classified = _safe_classify(name, raw)
        if classified.verdict is None:
            crashes.append(f"{name}: {classified.error}")
            continue
        reason = re.sub(r"\d+", "N", classified.verdict.reason)
        reasons[f"{classified.verdict.kind}: {reason}"] += 1
    return SweepFigures(messages=count, crashes=tuple(crashes), by_reason=dict(reasons.most_common()))
