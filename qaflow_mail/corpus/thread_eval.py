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
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from qaflow_mail.mail.parse import message_ids, normalize_message_id, parse_message
from qaflow_mail.mail.threads import (
    ThreadChoice,
    ThreadVia,
    is_plausible_message_id,
    parent_candidates,
    resolve_parent,
    shared_missing_ancestor,
)

# --------------------------------------------------------------------------------------------------- threader


@dataclass(frozen=True, slots=True)
class Stored:
    """What happened to one delivered message."""

    message_id: str
    duplicate: bool  # the Message-ID was already stored: this copy is dropped
    choice: ThreadChoice  # at arrival; later adoptions show in `MemoryThreader.parent_of`


class MemoryThreader:
    """Posts kept in lists and dicts; a topic is numbered by the post that started it.

    `reattach_orphans`: a message started a topic because none of its candidates was known yet; when one of them
    arrives, the message (and its topic) moves under it. `adopt_nearer_parents`: a message attached to a far
    ancestor moves under a nearer candidate of the same topic when that one arrives late (display only: the
    topics do not change). `join_missing_parents`: a message none of whose candidates is stored joins the topic of
    a post that waits for one of the same missing ids (mail.threads.shared_missing_ancestor), as the gateway does.
    """

    def __init__(
        self, *, reattach_orphans: bool = True, adopt_nearer_parents: bool = False, join_missing_parents: bool = True
    ) -> None:
        self._reattach = reattach_orphans
        self._adopt_nearer = adopt_nearer_parents
        self._join_missing = join_missing_parents
        self._post_ids: dict[str, int] = {}
        self._message_ids: list[str] = []
        self._candidates: list[tuple[str, ...]] = []
        self._parents: list[int | None] = []
        self._topics: list[int] = []
        self._members: dict[int, list[int]] = {}
        # an id not stored yet -> posts that would rather hang under it than where they are
        self._waiting: defaultdict[str, list[int]] = defaultdict(list)
        # an id not stored yet -> the first post that names it (any ancestor: replies sharing it share a topic)
        self._missing: dict[str, int] = {}

    def add(self, *, message_id: str, in_reply_to: Sequence[str], references: Sequence[str]) -> Stored:
        known = self._post_ids.get(message_id)
        if known is not None:
            choice = ThreadChoice(parent_post_id=self._parents[known], via=ThreadVia.NONE, matched_id=None)
            return Stored(message_id=message_id, duplicate=True, choice=choice)
        candidates = parent_candidates(message_id=message_id, in_reply_to=in_reply_to, references=references)
        lookup = {mid: self._post_ids[mid] for mid in candidates if mid in self._post_ids}
        choice = resolve_parent(token_post_id=None, candidates=candidates, lookup=lookup, in_reply_to=in_reply_to)
        post = len(self._message_ids)
        self._post_ids[message_id] = post
        self._message_ids.append(message_id)
        self._candidates.append(candidates)
        self._parents.append(choice.parent_post_id)
        shared = None
        if choice.parent_post_id is None and self._join_missing:
            waiting_topics = {mid: self._topics[self._missing[mid]] for mid in candidates if mid in self._missing}
            shared = shared_missing_ancestor(candidates, waiting_topics)
        if shared is not None:
            topic = shared[1]
            self._members[topic].append(post)
        elif choice.parent_post_id is None:
            topic = post
            self._members[post] = [post]
        else:
            topic = self._topics[choice.parent_post_id]
            self._members[topic].append(post)
        self._topics.append(topic)
        nearer = candidates if choice.matched_id is None else candidates[: candidates.index(choice.matched_id)]
        for mid in nearer:
            self._waiting[mid].append(post)
        for mid in candidates:
            if mid not in self._post_ids:
                self._missing.setdefault(mid, post)
        self._missing.pop(message_id, None)
        for waiting in self._waiting.pop(message_id, []):
            self._consider_move(waiting, under=post)
        return Stored(message_id=message_id, duplicate=False, choice=choice)

    def _consider_move(self, post: int, *, under: int) -> None:
        parent = self._parents[post]
        if parent is None:
            if not self._reattach:
                return
            if self._topics[post] != self._topics[under]:
                self._parents[post] = under
                self._merge_topic(self._topics[post], into=self._topics[under])
            elif not self._descends(under, post):
                # joined at the missing parent that has now arrived (an ancestor in the topic is a References loop)
                self._parents[post] = under
            return
        if not self._adopt_nearer or self._topics[post] != self._topics[under] or self._descends(under, post):
            return
        candidates = self._candidates[post]
        if candidates.index(self._message_ids[under]) < candidates.index(self._message_ids[parent]):
            self._parents[post] = under

    def _merge_topic(self, topic: int, *, into: int) -> None:
        moved = self._members.pop(topic)
        for member in moved:
            self._topics[member] = into
        self._members[into].extend(moved)

    def _descends(self, post: int, ancestor: int) -> bool:
        node: int | None = post
        while node is not None:
            if node == ancestor:
                return True
            node = self._parents[node]
        return False

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


# ---------------------------------------------------------------------------------------------- notmuch's rule


def linked_threads(mails: Sequence[CorpusMail], *, follow: Callable[[str], bool]) -> dict[str, str]:
    """Message-ID -> a thread key: the messages joined by every In-Reply-To/References id that `follow` accepts.

    With `follow` accepting everything this is notmuch's rule (it merges the threads of all referenced ids,
    including ids never delivered, its "ghosts"); it reproduces the answer keys exactly, which is what lets the
    measurement say why a pair differs.
    """
    parent: dict[str, str] = {}

    def find(mid: str) -> str:
        parent.setdefault(mid, mid)
        while parent[mid] != mid:
            parent[mid] = parent[parent[mid]]
            mid = parent[mid]
        return mid

    seen: set[str] = set()
    for mail in mails:
        if mail.message_id in seen:
            continue
        seen.add(mail.message_id)
        root = find(mail.message_id)
        for ref in (*mail.in_reply_to, *mail.references):
            if ref != mail.message_id and follow(ref):
                parent[find(ref)] = root = find(root)
    return {mid: find(mid) for mid in seen}


# ----------------------------------------------------------------------------------------------- measurement


@dataclass(frozen=True, slots=True)
class PairCounts:
    both: int = 0  # pairs of messages in the same thread for us and for the reference
    ours: int = 0
    reference: int = 0

    @property
    def either(self) -> int:
        return self.ours + self.reference - self.both

    @property
    def has_pairs(self) -> bool:
        return bool(self.ours or self.reference)

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


def _pairs(labels: Iterable[Hashable]) -> int:
    return sum(n * (n - 1) // 2 for n in Counter(labels).values())


def pair_counts(ours: Sequence[Hashable], reference: Sequence[Hashable]) -> PairCounts:
    """Pairwise agreement of two partitions of the same messages (position i is one message in both)."""
    return PairCounts(both=_pairs(zip(ours, reference, strict=True)), ours=_pairs(ours), reference=_pairs(reference))


class Cause(StrEnum):
    """Why notmuch puts two messages in one thread and we do not."""

    JUNK_ID = "junk id"  # notmuch links them only through ids we refuse (`<yes>`, no '@', too long)
    UNSEEN_ANCESTOR = "unseen ancestor"  # they share only ids never delivered (notmuch's ghost messages)
    FARTHER_REFERENCE = "farther reference"  # linked by a reference beyond the nearest known ancestor


@dataclass(frozen=True, slots=True)
class Unit:
    """One message of one notmuch database, stored once, with what each side made of it."""

    label: str
    reference_id: str
    our_id: str
    reference_thread: str
    our_topic: str
    notmuch_rule: str  # `linked_threads` following every id: should equal reference_thread
    without_junk: str  # notmuch's rule, junk ids not followed
    delivered_only: str  # notmuch's rule, junk ids and never-delivered ids not followed
    reference_parent: str | None
    our_parent: str | None
    subject: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]


def missed_pairs(units: Sequence[Unit]) -> dict[Cause, int]:
    """Pairs notmuch joins and we split, by cause. Every pair falls in exactly one cause, or the threader has a
    bug: `delivered_only` refines `without_junk`, which refines notmuch, and our topics refine `without_junk` (they
    join through delivered ids, and through never-delivered ids that replies share)."""
    ref = [u.reference_thread for u in units]
    junk_free = [(u.reference_thread, u.without_junk) for u in units]
    delivered = [(*key, u.delivered_only) for key, u in zip(junk_free, units, strict=True)]
    ours = [(*key, u.our_topic) for key, u in zip(junk_free, units, strict=True)]
    delivered_and_ours = [(*key, u.our_topic) for key, u in zip(delivered, units, strict=True)]
    both = _pairs(delivered_and_ours)
    return {
        Cause.JUNK_ID: _pairs(ref) - _pairs(junk_free),
        # junk-free pairs joined neither through delivered ids nor by us
        Cause.UNSEEN_ANCESTOR: _pairs(junk_free) - _pairs(delivered) - _pairs(ours) + both,
        Cause.FARTHER_REFERENCE: _pairs(delivered) - both,
    }


@dataclass(frozen=True, slots=True)
class Disagreement:
    """A notmuch thread we spread over several topics ("split"), or a topic over several threads ("merged")."""

    label: str
    kind: str
    groups: tuple[tuple[Unit, ...], ...]  # the messages, grouped by the side that separates them
    causes: dict[Cause, int]  # missed pairs by cause (empty for "merged": nothing explains a false merge)

    @property
    def junk_ids(self) -> tuple[str, ...]:
        """The ids in these messages' In-Reply-To/References that we refuse."""
        found = {
            mid
            for group in self.groups
            for u in group
            for mid in (*u.in_reply_to, *u.references)
            if mid != u.our_id and not is_plausible_message_id(mid)
        }
        return tuple(sorted(found))

    def shared_unseen_ids(self, delivered: Collection[str]) -> tuple[str, ...]:
        """Ids never delivered that messages of two or more groups name: what notmuch joins them through."""
        groups_naming: defaultdict[str, set[int]] = defaultdict(set)
        for index, group in enumerate(self.groups):
            for u in group:
                for mid in (*u.in_reply_to, *u.references):
                    if mid not in delivered and is_plausible_message_id(mid):
                        groups_naming[mid].add(index)
        return tuple(sorted(mid for mid, groups in groups_naming.items() if len(groups) > 1))


@dataclass(frozen=True, slots=True)
class CorpusResult:
    corpus: str
    files: int
    units: tuple[Unit, ...]
    duplicates: int  # files dropped as a repeated Message-ID within their database
    id_mismatches: tuple[tuple[ReferenceEntry, str], ...]  # (entry, our id) where our id is not notmuch's
    skipped: tuple[tuple[str, str, str], ...]  # files notmuch refused (skipped.tsv): not threaded
    parse_failures: tuple[ParseFailure, ...]
    disagreements: tuple[Disagreement, ...]

    def _by_label(self, key: Callable[[Unit], Hashable], reference: Callable[[Unit], Hashable]) -> PairCounts:
        total = PairCounts()
        for label in dict.fromkeys(u.label for u in self.units):
            units = [u for u in self.units if u.label == label]
            total += pair_counts([key(u) for u in units], [reference(u) for u in units])
        return total

    @property
    def counts(self) -> PairCounts:
        """Us against notmuch's answer key."""
        return self._by_label(lambda u: u.our_topic, lambda u: u.reference_thread)

    @property
    def counts_without_junk(self) -> PairCounts:
        """Us against notmuch's rule with junk ids not followed."""
        return self._by_label(lambda u: u.our_topic, lambda u: u.without_junk)

    @property
    def notmuch_rule_check(self) -> PairCounts:
        """notmuch's rule as `linked_threads` implements it against the answer key: P = R = 1 expected."""
        return self._by_label(lambda u: u.notmuch_rule, lambda u: u.reference_thread)

    @property
    def missed(self) -> dict[Cause, int]:
        total: Counter[Cause] = Counter()
        for label in dict.fromkeys(u.label for u in self.units):
            total.update(missed_pairs([u for u in self.units if u.label == label]))
        return {cause: total[cause] for cause in Cause}

    @property
    def threads_identical(self) -> tuple[int, int]:
        """(notmuch threads whose messages are exactly one of our topics, notmuch threads)."""
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
        """(messages whose parent is the one in parents.tsv, messages with a parent on either side)."""
        judged = [u for u in self.units if u.reference_parent is not None or u.our_parent is not None]
        return sum(u.reference_parent == u.our_parent for u in judged), len(judged)


def arrange(mails: Sequence[CorpusMail], order: str) -> list[CorpusMail]:
    """Arrival order: "file" (as listed), "reverse", or "shuffle:SEED"."""
    if order == "file":
        return list(mails)
    if order == "reverse":
        return list(reversed(mails))
    kind, _, seed = order.partition(":")
    if kind == "shuffle" and seed.isdigit():
        shuffled = list(mails)
        random.Random(int(seed)).shuffle(shuffled)
        return shuffled
    raise ValueError(f"unknown order {order!r}: file, reverse or shuffle:SEED")


def thread_mails(
    mails: Iterable[CorpusMail], *, reattach_orphans: bool = True, adopt_nearer_parents: bool = False,
    join_missing_parents: bool = True,
) -> MemoryThreader:
    threader = MemoryThreader(reattach_orphans=reattach_orphans, adopt_nearer_parents=adopt_nearer_parents,
                              join_missing_parents=join_missing_parents)
    for mail in mails:
        threader.add(message_id=mail.message_id, in_reply_to=mail.in_reply_to, references=mail.references)
    return threader


def _disagreements(label: str, units: Sequence[Unit]) -> list[Disagreement]:
    found = []
    sides: tuple[tuple[str, Callable[[Unit], str], Callable[[Unit], str]], ...] = (
        ("split", lambda u: u.reference_thread, lambda u: u.our_topic),
        ("merged", lambda u: u.our_topic, lambda u: u.reference_thread),
    )
    for kind, outer, inner in sides:
        threads: defaultdict[str, list[Unit]] = defaultdict(list)
        for u in units:
            threads[outer(u)].append(u)
        for members in threads.values():
            groups: defaultdict[str, list[Unit]] = defaultdict(list)
            for u in members:
                groups[inner(u)].append(u)
            if len(groups) > 1:
                causes = missed_pairs(members) if kind == "split" else {}
                found.append(
                    Disagreement(
                        label=label,
                        kind=kind,
                        groups=tuple(tuple(g) for g in groups.values()),
                        causes={cause: n for cause, n in causes.items() if n},
                    )
                )
    return found


def _label_units(
    label: str, mails: Sequence[CorpusMail], threader: MemoryThreader, parents: Mapping[str, str | None]
) -> list[Unit]:
    first: dict[str, CorpusMail] = {}
    for mail in mails:
        first.setdefault(mail.entry.message_id, mail)
    delivered = {mail.message_id for mail in mails}
    notmuch_rule = linked_threads(mails, follow=lambda _: True)
    without_junk = linked_threads(mails, follow=is_plausible_message_id)
    delivered_only = linked_threads(mails, follow=lambda mid: mid in delivered and is_plausible_message_id(mid))
    to_reference = {mail.message_id: mail.entry.message_id for mail in first.values()}
    units = []
    for ref_id, mail in first.items():
        our_parent = threader.parent_of(mail.message_id)
        units.append(
            Unit(
                label=label,
                reference_id=ref_id,
                our_id=mail.message_id,
                reference_thread=mail.entry.thread_key,
                our_topic=threader.topic_of(mail.message_id),
                notmuch_rule=notmuch_rule[mail.message_id],
                without_junk=without_junk[mail.message_id],
                delivered_only=delivered_only[mail.message_id],
                reference_parent=parents.get(ref_id),
                # our parents are our ids; name them as notmuch does where the two differ
                our_parent=None if our_parent is None else to_reference.get(our_parent, our_parent),
                subject=mail.subject,
                in_reply_to=mail.in_reply_to,
                references=mail.references,
            )
        )
    return units


def evaluate_corpus(
    corpus_dir: Path,
    *,
    order: str = "file",
    reattach_orphans: bool = True,
    adopt_nearer_parents: bool = False,
    join_missing_parents: bool = True,
) -> CorpusResult:
    """Thread each notmuch database (label) of a corpus on its own and compare it with notmuch's threads."""
    entries = read_reference(corpus_dir)
    parents = read_parents(corpus_dir)
    mails, parse_failures = load_mails(corpus_dir, entries)
    by_label: defaultdict[str, list[CorpusMail]] = defaultdict(list)
    for mail in mails:
        by_label[mail.entry.label].append(mail)
    units: list[Unit] = []
    disagreements: list[Disagreement] = []
    for label, label_mails in by_label.items():
        threader = thread_mails(
            arrange(label_mails, order),
            reattach_orphans=reattach_orphans,
            adopt_nearer_parents=adopt_nearer_parents,
            join_missing_parents=join_missing_parents,
        )
        label_units = _label_units(label, label_mails, threader, parents)
        units.extend(label_units)
        disagreements.extend(_disagreements(label, label_units))
    return CorpusResult(
        corpus=corpus_dir.name,
        files=len(mails),
        units=tuple(units),
        duplicates=len(mails) - len(units),
        id_mismatches=tuple((m.entry, m.message_id) for m in mails if m.message_id != m.entry.message_id),
        skipped=tuple(read_skipped(corpus_dir)),
        parse_failures=tuple(parse_failures),
        disagreements=tuple(disagreements),
    )


def evaluate_all(
    root: Path, *, order: str = "file", reattach_orphans: bool = True, adopt_nearer_parents: bool = False,
    join_missing_parents: bool = True,
) -> list[CorpusResult]:
    """Every corpus under `root` that has an answer key."""
    return [
        evaluate_corpus(
            corpus_dir, order=order, reattach_orphans=reattach_orphans, adopt_nearer_parents=adopt_nearer_parents,
            join_missing_parents=join_missing_parents,
        )
        for corpus_dir in reference_corpora(root)
    ]
