"""Thread a stream of mail in memory the way the gateway does, and measure it against notmuch's threading.

`MemoryThreader` mimics ingest: each message either starts a topic or joins the topic of its nearest known
ancestor (`mail.threads`). With `reattach_orphans` (what the import command does) a message that arrives after
its replies adopts the topics those replies had to start, so arrival order does not split threads.

The rest reads the answer keys shipped with ../shared/corpora (one notmuch database per label: `messages.tsv`,
`threads.tsv`, `parents.tsv`, `skipped.tsv`) and computes pairwise precision and recall over pairs of messages
put in the same thread.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import hashlib
import mailbox
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qaflow_mail.mail.parse import message_ids, normalize_message_id, parse_message
from qaflow_mail.mail.threads import ThreadChoice, ThreadVia, parent_candidates, resolve_parent

# --------------------------------------------------------------------------------------------------- threader


@dataclass(frozen=True, slots=True)
class Stored:
    """What happened to one delivered message."""

    message_id: str
    duplicate: bool  # the Message-ID was already stored: this copy is dropped
    choice: ThreadChoice  # at arrival; a later re-attachment shows in `MemoryThreader.parent_of`


class MemoryThreader:
    """Posts kept in dicts; topics are numbered by the post that started them."""

    def __init__(self, *, reattach_orphans: bool = True) -> None:
        self._reattach = reattach_orphans
        self._post_ids: dict[str, int] = {}
        self._message_ids: list[str] = []
        self._parents: list[int | None] = []
        self._topics: list[int] = []
        self._members: dict[int, list[int]] = {}
        self._waiting: defaultdict[str, list[int]] = defaultdict(list)  # unknown id -> orphans naming it

    def add(self, *, message_id: str, in_reply_to: Sequence[str], references: Sequence[str]) -> Stored:
        if message_id in self._post_ids:
            known = self._post_ids[message_id]
            parent = self._parents[known]
            choice = ThreadChoice(parent_post_id=parent, via=ThreadVia.NONE, matched_id=None)
            return Stored(message_id=message_id, duplicate=True, choice=choice)
        candidates = parent_candidates(message_id=message_id, in_reply_to=in_reply_to, references=references)
        lookup = {mid: self._post_ids[mid] for mid in candidates if mid in self._post_ids}
        choice = resolve_parent(token_post_id=None, candidates=candidates, lookup=lookup, in_reply_to=in_reply_to)
        post = len(self._message_ids)
        self._post_ids[message_id] = post
        self._message_ids.append(message_id)
        self._parents.append(choice.parent_post_id)
        if choice.parent_post_id is None:
            self._topics.append(post)
            self._members[post] = [post]
            for mid in candidates:
                self._waiting[mid].append(post)
        else:
            topic = self._topics[choice.parent_post_id]
            self._topics.append(topic)
            self._members[topic].append(post)
        if self._reattach:
            self._adopt_orphans(post)
        return Stored(message_id=message_id, duplicate=False, choice=choice)

    def _adopt_orphans(self, post: int) -> None:
        for orphan in self._waiting.pop(self._message_ids[post], []):
            # Already adopted through another of its ids, or an ancestor of `post` (a References loop).
            if self._parents[orphan] is not None or self._topics[orphan] == self._topics[post]:
                continue
            self._parents[orphan] = post
            target = self._topics[post]
            moved = self._members.pop(self._topics[orphan])
            for member in moved:
                self._topics[member] = target
            self._members[target].extend(moved)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._post_ids

    def topic_of(self, message_id: str) -> str:
        """The Message-ID of the post that started the message's topic."""
        return self._message_ids[self._topics[self._post_ids[message_id]]]

    def parent_of(self, message_id: str) -> str | None:
        parent = self._parents[self._post_ids[message_id]]
        return None if parent is None else self._message_ids[parent]

    def topics(self) -> dict[str, tuple[str, ...]]:
        """Topic root Message-ID -> the Message-IDs in the topic, in arrival order."""
        return {
            self._message_ids[topic]: tuple(self._message_ids[post] for post in sorted(posts))
            for topic, posts in self._members.items()
        }


# -------------------------------------------------------------------------------------------- reference data


@dataclass(frozen=True, slots=True)
class ReferenceEntry:
    """One line of messages.tsv: a file of a notmuch database (label) and what notmuch made of it."""

    corpus: str
    label: str
    file: str  # relative to the label's folder; `name.mbox#3` is the third message of an mbox
    message_id: str  # as notmuch saw it; `notmuch-sha1-<sha1 of the file>` when the mail has none
    thread_key: str


@dataclass(frozen=True, slots=True)
class CorpusMail:
    entry: ReferenceEntry
    message_id: str  # ours (parse.py), mirrored to notmuch's sha1 id when the mail has none
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str


@dataclass(frozen=True, slots=True)
class ParseFailure:
    entry: ReferenceEntry
    error: str


def _read_tsv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        return [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def reference_corpora(root: Path) -> list[Path]:
    """Folders under `root` that carry a notmuch answer key (messages.tsv and threads.tsv)."""
    return sorted(p for p in root.iterdir() if (p / "messages.tsv").is_file() and (p / "threads.tsv").is_file())


def read_reference(corpus_dir: Path) -> list[ReferenceEntry]:
    return [
        ReferenceEntry(corpus=corpus_dir.name, label=row[0], file=row[1], message_id=row[2], thread_key=row[3])
        for row in _read_tsv(corpus_dir / "messages.tsv")
    ]


def read_parents(corpus_dir: Path) -> dict[str, str | None]:
    """parents.tsv: Message-ID -> the parent notmuch's tree shows (None for a root)."""
    return {row[0]: (row[1] if len(row) > 1 and row[1] else None) for row in _read_tsv(corpus_dir / "parents.tsv")}


def read_skipped(corpus_dir: Path) -> list[tuple[str, str, str]]:
    """skipped.tsv: (label, file, reason) for files notmuch refused; they are not in the answer key."""
    return [(row[0], row[1], row[2] if len(row) > 2 else "") for row in _read_tsv(corpus_dir / "skipped.tsv")]


def _split_mbox_name(file: str) -> tuple[str, int | None]:
    name, sep, index = file.rpartition("#")
    if sep and index.isdigit():
        return name, int(index)
    return file, None


def locate(corpus_dir: Path, entry: ReferenceEntry) -> tuple[Path, int | None]:
    """The file behind an entry, and the 1-based message index inside an mbox.

    Labels name the database: the corpus itself, a folder (`default`), a nested folder with '/' spelled '-'
    (`threading-ghost-root`), or `folder-mboxname` (`mbox-mbox_complex`).
    """
    name, index = _split_mbox_name(entry.file)
    label = entry.label
    for folder in (label, label.replace("-", "/", 1), label.split("-", 1)[0], "."):
        path = corpus_dir / folder / name
        if path.is_file():
            return path, index
    raise FileNotFoundError(f"{corpus_dir.name}: no file for {label} {entry.file}")


class _RawReader:
    def __init__(self) -> None:
        self._mboxes: dict[Path, list[bytes]] = {}

    def read(self, path: Path, index: int | None) -> bytes:
        if index is None:
            return path.read_bytes()
        if path not in self._mboxes:
            box = mailbox.mbox(path, create=False)
            try:
                self._mboxes[path] = [box.get_bytes(key) for key in box.iterkeys()]
            finally:
                box.close()
        return self._mboxes[path][index - 1]


def _threading_headers(raw: bytes) -> tuple[str | None, tuple[str, ...], tuple[str, ...], str]:
    """Message-ID, In-Reply-To, References and Subject read with compat32, for mail parse_message fails on."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)

    def text(name: str) -> str | None:
        value = headers.get(name)
        return None if value is None else " ".join(str(value).split())

    return (
        normalize_message_id(text("Message-ID")),
        message_ids(text("In-Reply-To")),
        message_ids(text("References")),
        text("Subject") or "",
    )


def load_mails(corpus_dir: Path, entries: Iterable[ReferenceEntry]) -> tuple[list[CorpusMail], list[ParseFailure]]:
    """Parse every file of the answer key with parse_message; falls back to compat32 headers when it raises."""
    reader = _RawReader()
    mails = []
    failures = []
    for entry in entries:
        raw = reader.read(*locate(corpus_dir, entry))
        try:
            parsed = parse_message(raw)
        except Exception as exc:  # a parser bug must not hide the threading figures; it is reported
            failures.append(ParseFailure(entry=entry, error=f"{type(exc).__name__}: {exc}"))
            message_id, in_reply_to, references, subject = _threading_headers(raw)
        else:
            message_id = None if parsed.message_id_synthesized else parsed.message_id
            in_reply_to, references, subject = parsed.in_reply_to, parsed.references, parsed.subject
        if message_id is None:
            # notmuch's id for a mail without Message-ID; the gateway synthesises its own from sha256.
            message_id = "notmuch-sha1-" + hashlib.sha1(raw).hexdigest()
        mails.append(CorpusMail(entry, message_id, in_reply_to, references, subject))
    return mails, failures


# ----------------------------------------------------------------------------------------------- measurement


@dataclass(frozen=True, slots=True)
class PairCounts:
    both: int = 0  # pairs of messages in the same thread for us and for notmuch
    ours: int = 0
    reference: int = 0

    @property
    def either(self) -> int:
        return self.ours + self.reference - self.both

    @property
    def precision(self) -> float:
        return self.both / self.ours if self.ours else 1.0

    @property
    def recall(self) -> float:
        return self.both / self.reference if self.reference else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: PairCounts) -> PairCounts:
        return PairCounts(self.both + other.both, self.ours + other.ours, self.reference + other.reference)


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def pair_counts(ours: Sequence[str], reference: Sequence[str]) -> PairCounts:
    """Pairwise agreement of two labelings of the same messages (position i is one message in both)."""
    cells = Counter(zip(ours, reference, strict=True))
    return PairCounts(
        both=sum(_pairs(n) for n in cells.values()),
        ours=sum(_pairs(n) for n in Counter(ours).values()),
        reference=sum(_pairs(n) for n in Counter(reference).values()),
    )


@dataclass(frozen=True, slots=True)
class Unit:
    """One message as stored once per database: notmuch's id, its thread there and ours, and both parents."""

    label: str
    reference_id: str
    our_id: str
    reference_thread: str
    our_topic: str
    reference_parent: str | None
    our_parent: str | None
    subject: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Disagreement:
    label: str
    kind: str  # "split": one notmuch thread over several topics; "merged": one topic over several threads
    groups: tuple[tuple[Unit, ...], ...]  # the messages, grouped by the side that separates them


@dataclass(frozen=True, slots=True)
class CorpusResult:
    corpus: str
    files: int
    units: tuple[Unit, ...]
    counts: PairCounts
    duplicates: int  # files dropped as repeated Message-IDs
    id_mismatches: tuple[tuple[ReferenceEntry, str], ...]  # (entry, our id) where our id differs
    skipped: tuple[tuple[str, str, str], ...]
    parse_failures: tuple[ParseFailure, ...] = field(default=())
    disagreements: tuple[Disagreement, ...] = field(default=())

    @property
    def threads_identical(self) -> tuple[int, int]:
        """(notmuch threads whose member set is exactly one of our topics, notmuch threads)."""
        ours: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        ref: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        for u in self.units:
            ours[(u.label, u.our_topic)].add(u.reference_id)
            ref[(u.label, u.reference_thread)].add(u.reference_id)
        our_sets = {(label, frozenset(ids)) for (label, _), ids in ours.items()}
        same = sum((label, frozenset(ids)) in our_sets for (label, _), ids in ref.items())
        return same, len(ref)

    @property
    def parents_agreeing(self) -> tuple[int, int]:
        """(messages whose parent is notmuch's tree parent, messages with a parent in parents.tsv or ours)."""
        judged = [u for u in self.units if u.reference_parent is not None or u.our_parent is not None]
        return sum(u.reference_parent == u.our_parent for u in judged), len(judged)


def _order(mails: list[CorpusMail], order: str) -> list[CorpusMail]:
    if order == "file":
        return mails
    if order == "reverse":
        return mails[::-1]
    raise ValueError(f"unknown order {order!r} (file, reverse)")


def thread_label(mails: Sequence[CorpusMail], *, reattach_orphans: bool = True) -> MemoryThreader:
    threader = MemoryThreader(reattach_orphans=reattach_orphans)
    for mail in mails:
        threader.add(message_id=mail.message_id, in_reply_to=mail.in_reply_to, references=mail.references)
    return threader


def _disagreements(label: str, units: Sequence[Unit]) -> list[Disagreement]:
    found = []
    by_ref: defaultdict[str, list[Unit]] = defaultdict(list)
    by_ours: defaultdict[str, list[Unit]] = defaultdict(list)
    for u in units:
        by_ref[u.reference_thread].append(u)
        by_ours[u.our_topic].append(u)
    for kind, outer, inner_key in (
        ("split", by_ref, lambda u: u.our_topic),
        ("merged", by_ours, lambda u: u.reference_thread),
    ):
        for members in outer.values():
            groups: defaultdict[str, list[Unit]] = defaultdict(list)
            for u in members:
                groups[inner_key(u)].append(u)
            if len(groups) > 1:
                found.append(Disagreement(label, kind, tuple(tuple(g) for g in groups.values())))
    return found


def evaluate_corpus(corpus_dir: Path, *, order: str = "file", reattach_orphans: bool = True) -> CorpusResult:
    """Thread each notmuch database (label) of a corpus on its own and compare it to notmuch's partition."""
    entries = read_reference(corpus_dir)
    parents = read_parents(corpus_dir)
    mails, parse_failures = load_mails(corpus_dir, entries)
    by_label: defaultdict[str, list[CorpusMail]] = defaultdict(list)
    for mail in mails:
        by_label[mail.entry.label].append(mail)
    units: list[Unit] = []
    disagreements: list[Disagreement] = []
    duplicates = 0
    for label, label_mails in by_label.items():
        threader = thread_label(_order(label_mails, order), reattach_orphans=reattach_orphans)
        first: dict[str, CorpusMail] = {}
        for mail in label_mails:
            if mail.entry.message_id in first:
                duplicates += 1
            else:
                first[mail.entry.message_id] = mail
        # Our parents are our ids; report them as notmuch's ids where the two differ.
        to_reference = {m.message_id: m.entry.message_id for m in first.values()}
        label_units = []
        for ref_id, mail in first.items():
            our_parent = threader.parent_of(mail.message_id)
            label_units.append(
                Unit(
                    label=label,
                    reference_id=ref_id,
                    our_id=mail.message_id,
                    reference_thread=mail.entry.thread_key,
                    our_topic=threader.topic_of(mail.message_id),
                    reference_parent=parents.get(ref_id),
                    our_parent=None if our_parent is None else to_reference.get(our_parent, our_parent),
                    subject=mail.subject,
                    in_reply_to=mail.in_reply_to,
                    references=mail.references,
                )
            )
        units.extend(label_units)
        disagreements.extend(_disagreements(label, label_units))
    counts = PairCounts()
    for label in by_label:
        label_units = [u for u in units if u.label == label]
        counts += pair_counts([u.our_topic for u in label_units], [u.reference_thread for u in label_units])
    mismatches = tuple((m.entry, m.message_id) for m in mails if m.message_id != m.entry.message_id)
    return CorpusResult(
        corpus=corpus_dir.name,
        files=len(mails),
        units=tuple(units),
        counts=counts,
        duplicates=duplicates,
        id_mismatches=mismatches,
        skipped=tuple(read_skipped(corpus_dir)),
        parse_failures=tuple(parse_failures),
        disagreements=tuple(disagreements),
    )


def evaluate_all(root: Path, *, order: str = "file", reattach_orphans: bool = True) -> Iterator[CorpusResult]:
    for corpus_dir in reference_corpora(root):
        yield evaluate_corpus(corpus_dir, order=order, reattach_orphans=reattach_orphans)
