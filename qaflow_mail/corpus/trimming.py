"""The content layer measured against the shared corpora (../shared/corpora).

- `sweep`: every message through parse_message and extract_content; crashes, undecodable parts, speed.
- `score_*`: quote/signature trimming against the answer keys of email_reply_trimmer (Discourse),
  email_reply_parser (GitHub, Zapier) and talon (Mailgun).

This module reads files; the mail path itself (qaflow_mail.mail) stays pure.
"""

from __future__ import annotations

import json
import mailbox
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qaflow_mail.mail.content import extract_content, html_reply_text
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.mail.quotes import split_reply, trim_reply

__all__ = [
    "BODY_ONLY_FOLDERS",
    "CorpusMessage",
    "KeyScore",
    "SweepFigures",
    "iter_messages",
    "normalize_ws",
    "score_all",
    "score_email_reply_parser",
    "score_email_reply_trimmer",
    "score_email_reply_trimmer_elided",
    "score_talon_html",
    "score_talon_standard",
    "sweep",
]

Trim = Callable[[str], str]

# Folders whose files are reply bodies or HTML fragments (answer keys), not RFC 5322 messages.
BODY_ONLY_FOLDERS = ("email_reply_parser", "email_reply_trimmer", "talon/signature")
_SKIPPED_SUFFIXES = frozenset({".md", ".json", ".tsv", ".html", ".py", ".rb"})
_SKIPPED_NAMES = frozenset({"README", "README.notmuch-upstream", "LICENSE", "COPYING"})
_WS_RE = re.compile(r"\s+")


def normalize_ws(text: str) -> str:
    """Whitespace-insensitive form used for the "normalised" scores."""
    return _WS_RE.sub(" ", text).strip()


# --- reading the corpora ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CorpusMessage:
    label: str  # "folder/file", or "folder/file.mbox#3" for the third message of an mbox
    raw: bytes


def _is_message_file(path: Path, root: Path) -> bool:
    relative = path.relative_to(root).as_posix()
    if any(relative == f or relative.startswith(f + "/") for f in BODY_ONLY_FOLDERS):
        return False
    if path.name in _SKIPPED_NAMES or path.name.startswith("."):
        return False
    if "/" not in relative:  # files at the top level are indexes (inventory.tsv)
        return False
    return path.suffix.lower() not in _SKIPPED_SUFFIXES and not path.name.endswith("_reply_text")


def _is_mbox(path: Path) -> bool:
    if path.suffix.lower() == ".mbox":
        return True
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def _mbox_messages(path: Path, label: str) -> Iterator[CorpusMessage]:
    box = mailbox.mbox(path, create=False)
    try:
        for number, key in enumerate(box.iterkeys(), start=1):
            yield CorpusMessage(f"{label}#{number}", box.get_bytes(key))
    finally:
        box.close()


def iter_messages(root: Path) -> Iterator[CorpusMessage]:
    """Every mail message under `root` in a stable order: single files (.eml, .txt, Maildir names
    such as `cur/29:2,`) and each message of an mbox (`.mbox`, or a file starting with "From ")."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _is_message_file(p, root)):
        label = path.relative_to(root).as_posix()
        if _is_mbox(path):
            yield from _mbox_messages(path, label)
        else:
            yield CorpusMessage(label, path.read_bytes())


# --- the sweep -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepFigures:
    messages: int
    crashes: tuple[tuple[str, str], ...]  # (label, exception) for each message that raised
    undecodable_parts: int  # body parts no charset could read without loss
    guessed_charset_parts: int  # body parts read with a charset other than the declared one
    empty_bodies: int  # messages whose visible reply is empty (bounces, attachments only, ...)
    seconds: float

    @property
    def ms_per_message(self) -> float:
        return 1000.0 * self.seconds / self.messages if self.messages else 0.0


def sweep(root: Path, *, clock: Callable[[], float] = time.perf_counter) -> SweepFigures:
    """Every corpus message through parse_message and extract_content."""
    messages = undecodable = guessed = empty = 0
    crashes: list[tuple[str, str]] = []
    spent = 0.0
    for message in iter_messages(root):
        messages += 1
        started = clock()
        try:
            parsed = parse_message(message.raw)
            content = extract_content(parsed)
        except Exception as exc:  # a crash is what this sweep exists to find and count
            crashes.append((message.label, f"{type(exc).__name__}: {exc}"))
        else:
            undecodable += parsed.undecodable_parts
            guessed += parsed.guessed_charset_parts
            empty += content.is_empty
        spent += clock() - started
    return SweepFigures(messages, tuple(crashes), undecodable, guessed, empty, spent)


# --- answer keys ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyScore:
    key: str
    total: int
    exact: int  # equal after .strip() (or every stated assertion holds as written)
    normalized: int  # equal once all whitespace runs are one space
    failures: tuple[str, ...] = ()  # cases that fail even whitespace-normalised

    @property
    def exact_ratio(self) -> float:
        return self.exact / self.total if self.total else 0.0

    @property
    def normalized_ratio(self) -> float:
        return self.normalized / self.total if self.total else 0.0


def _score(key: str, cases: Iterator[tuple[str, str, str]]) -> KeyScore:
    """Score (name, got, expected) triples."""
    total = exact = normalized = 0
    failures: list[str] = []
    for name, got, expected in cases:
        total += 1
        if got.strip() == expected.strip():
            exact += 1
        if normalize_ws(got) == normalize_ws(expected):
            normalized += 1
        else:
            failures.append(name)
    return KeyScore(key, total, exact, normalized, tuple(failures))


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def score_email_reply_trimmer(root: Path, trim: Trim = trim_reply) -> KeyScore:
    """emails/NAME.txt trimmed, against trimmed/NAME.txt (upstream compares after .strip())."""
    folder = root / "email_reply_trimmer"

    def cases() -> Iterator[tuple[str, str, str]]:
        for email_path in sorted((folder / "emails").glob("*.txt")):
            expected = folder / "trimmed" / email_path.name
            if expected.exists():
                yield email_path.name, trim(_read(email_path)), _read(expected)

    return _score("email_reply_trimmer", cases())


def score_email_reply_trimmer_elided(root: Path, split: Callable[[str], tuple[str, str]] = split_reply) -> KeyScore:
    """The removed part, against elided/NAME.txt where the key has one."""
    folder = root / "email_reply_trimmer"

    def cases() -> Iterator[tuple[str, str, str]]:
        for expected in sorted((folder / "elided").glob("*.txt")):
            email_path = folder / "emails" / expected.name
            if email_path.exists():
                yield expected.name, split(_read(email_path))[1], _read(expected)

    return _score("email_reply_trimmer (elided)", cases())


def _assertion_holds(kind: str, value: object, visible: str, seconds: float, *, loose: bool) -> bool | None:
    """One stated assertion of the email_reply_parser key; None when it is about fragments."""
    norm: Trim = normalize_ws if loose else str.strip
    if kind == "max_seconds":
        return seconds < float(str(value))
    if not isinstance(value, str):
        return None
    if kind in {"visible_eq", "visible_strip_eq"}:
        return norm(visible) == norm(value)
    if kind == "visible_contains":
        return norm(value) in norm(visible)
    if kind == "visible_not_contains":
        return norm(value) not in norm(visible)
    return None


def score_email_reply_parser(
    root: Path, trim: Trim = trim_reply, *, clock: Callable[[], float] = time.perf_counter
) -> KeyScore:
    """The visible-text and timing assertions that the upstream suites state (expected.json).

    Fragment-level assertions (fragment counts, quoted/signature flags) describe that library's
    own data model and are not scored. A fixture counts when all its visible assertions hold.
    """
    folder = root / "email_reply_parser"
    fixtures = json.loads(_read(folder / "expected.json"))["fixtures"]
    total = exact = normalized = 0
    failures: list[str] = []
    for name, entry in sorted(fixtures.items()):
        stated = [(s[0], s[-1]) for s in entry.get("stated_by_tests", [])]
        checks = [(k, v) for k, v in stated if k.startswith("visible") or k == "max_seconds"]
        if not checks:
            continue
        text = _read(folder / name)
        started = clock()
        visible = trim(text)
        seconds = clock() - started
        total += 1
        if all(_assertion_holds(k, v, visible, seconds, loose=False) for k, v in checks):
            exact += 1
        if all(_assertion_holds(k, v, visible, seconds, loose=True) for k, v in checks):
            normalized += 1
        else:
            failures.append(name)
    return KeyScore("email_reply_parser", total, exact, normalized, tuple(failures))


def score_talon_standard(root: Path, trim: Trim = trim_reply) -> KeyScore:
    """standard_replies/*.eml: the first text/plain part, trimmed, is "Hello" or NAME_reply_text."""
    folder = root / "talon" / "standard_replies"

    def cases() -> Iterator[tuple[str, str, str]]:
        for eml in sorted(folder.glob("*.eml")):
            key = folder / f"{eml.stem}_reply_text"
            expected = _read(key) if key.exists() else "Hello"
            yield eml.name, trim(parse_message(eml.read_bytes()).text or ""), expected

    return _score("talon standard_replies", cases())


def score_talon_html(root: Path, to_text: Trim = html_reply_text) -> KeyScore:
    """html_replies/*.html: the visible reply as text is "Hi. I am fine. Thanks, Alex" (whitespace-insensitive)."""
    folder = root / "talon" / "html_replies"
    expected = "Hi. I am fine.\n\nThanks,\nAlex"

    def cases() -> Iterator[tuple[str, str, str]]:
        for page in sorted(folder.glob("*.html")):
            yield page.name, to_text(_read(page)), expected

    return _score("talon html_replies", cases())


def score_all(root: Path) -> list[KeyScore]:
    return [
        score_email_reply_trimmer(root),
        score_email_reply_trimmer_elided(root),
        score_email_reply_parser(root),
        score_talon_standard(root),
        score_talon_html(root),
    ]
