"""Import an existing archive (mbox files, Maildir folders, .eml files and folders of them) into a category.

Every message goes through the same `pipeline.ingest` as live mail, addressed to the category, with source
"import": the same loop and automatic-mail guards, de-duplication, threading (a reply imported before its
parent is re-attached when the parent arrives) and content extraction. Unknown authors become staged users.
Pipermail's obfuscated senders ("goran at example.com") are read as addresses, and a subject tag naming the list
("[users@httpd]": one a List-Id names, else the archive's most common tag) is stripped unless asked to keep it.
Messages are ingested oldest first (by their Date header; undated ones last, in the order found), so posts are
numbered as they were written. A message seen before (same Message-ID and bytes, whatever became of it) is
counted as a duplicate without being ingested again, so importing twice changes nothing. Notifications are not
sent for imported posts (enqueue_notifications skips source "import"), nor rejection notices.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import email.utils
import hashlib
import logging
import mailbox
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from qaflow_mail.db import queries
from qaflow_mail.db.models import Disposition, InboundMessage, Source, User, UserStatus
from qaflow_mail.deps import Deps
from qaflow_mail.mail.charsets import recover_8bit
from qaflow_mail.mail.list_archive import deobfuscated_sender, list_tags, strip_subject_tags, subject_tag
from qaflow_mail.mail.parse import ParsedMail, normalize_message_id, unfold
from qaflow_mail.pipeline import Outcome
from qaflow_mail.pipeline.ingest import ingest, parse
from qaflow_mail.replies import ATTACHMENT_REFUSED, EMPTY_REPLY, NO_FROM, ONLY_SIGNATURE

log = logging.getLogger(__name__)

SOURCE = Source.IMPORT
Progress = Callable[[int, int], None]

_HEADER_LINE_RE = re.compile(rb"^(?:From |[!-9;-~]+[ \t]*:)")
_LEADING_BLANK_LINES_RE = re.compile(rb"\A(?:[ \t]*\r?\n)+")
_SNIFF_BYTES = 4096
_HEADER_BYTES = 64 * 1024
# Maildir++ and mail-server bookkeeping that sits beside messages.
_NOT_MAIL_NAMES = frozenset({"dovecot-uidlist", "dovecot-keywords", "maildirfolder", "subscriptions",
                             "courierimapuiddb", "courierimapkeywords", "courierimapacl"})


class UnknownCategory(LookupError):
    """The import cannot start: the category does not exist."""


@dataclass(frozen=True, slots=True)
class ImportReport:
    messages: int  # messages found and looked at
    imported: int  # new posts
    duplicates: int  # already stored (this import, an earlier one, or live mail)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    unreadable: tuple[str, ...] = ()  # "path: why" for paths that could not be read
    staged_users: int = 0  # users created for unknown authors
    category: str = ""  # the category slug imported into
    skipped_messages: tuple[tuple[str, str], ...] = ()  # (where the message was found, why it was skipped)
    stripped_tags: tuple[str, ...] = ()  # subject tags taken off as naming the list

    def to_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "messages": self.messages,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "skipped": dict(self.skipped),
            "unreadable": list(self.unreadable),
            "staged_users": self.staged_users,
            "skipped_messages": [{"message": label, "reason": reason} for label, reason in self.skipped_messages],
            "stripped_subject_tags": list(self.stripped_tags),
        }


@dataclass(frozen=True, slots=True)
class _Source:
    label: str
    load: Callable[[], tuple[bytes, str | None]]  # the message, and the sender on its mbox "From " line


@dataclass(frozen=True, slots=True)
class _Header:
    message_id: str
    sha256: str
    date: datetime | None
    envelope_from: str
    size: int
    subject_tag: str | None = None
    list_id: str | None = None
    raw_from: str = ""  # the From header as written (pipermail's "goran at example.com (Goran)")


# --- finding the messages ---------------------------------------------------------------------------------


def _looks_like_mail(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = _LEADING_BLANK_LINES_RE.sub(b"", handle.read(_SNIFF_BYTES))
    except OSError:
        return True  # let reading it report the error
    return bool(_HEADER_LINE_RE.match(head))


def _is_mbox(path: Path) -> bool:
    if path.suffix.lower() in {".mbox", ".mbx"}:
        return True
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def _is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _mbox_sources(path: Path, stack: ExitStack) -> Iterator[_Source]:
    box = mailbox.mbox(path, create=False)
    stack.callback(box.close)

    def load(key: str) -> tuple[bytes, str | None]:
        from_line, _, raw = box.get_bytes(key, from_=True).partition(b"\n")
        words = from_line.decode("ascii", "replace").split()
        return raw, words[1] if len(words) > 1 else None

    for number, key in enumerate(box.iterkeys(), start=1):
        yield _Source(f"{path}#{number}", partial(load, key))


def _maildir_sources(path: Path) -> Iterator[_Source]:
    box = mailbox.Maildir(path, factory=None, create=False)

    def load(key: str) -> tuple[bytes, str | None]:
        return box.get_bytes(key), None

    for key in sorted(box.iterkeys()):
        yield _Source(f"{path}#{key}", partial(load, key))
    for folder in sorted(box.list_folders()):
        yield from _maildir_sources(path / f".{folder}")


def _file_sources(path: Path, stack: ExitStack) -> Iterator[_Source]:
    if _is_mbox(path):
        yield from _mbox_sources(path, stack)
    else:
        yield _Source(str(path), lambda: (path.read_bytes(), None))


def _tree_sources(root: Path, stack: ExitStack, not_mail: list[str]) -> Iterator[_Source]:
    """Every message under a folder: Maildirs, Maildir-like trees (cur/29:2,), .eml files and mboxes."""
    if _is_maildir(root):
        yield from _maildir_sources(root)
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _tree_sources(entry, stack, not_mail)
        elif entry.is_file():
            if entry.name.lower() in _NOT_MAIL_NAMES or not _looks_like_mail(entry):
                not_mail.append(str(entry))
                continue
            yield from _file_sources(entry, stack)


def _sources(paths: Sequence[Path], stack: ExitStack, unreadable: list[str], not_mail: list[str]) -> list[_Source]:
    found: list[_Source] = []
    for path in paths:
        try:
            if path.is_dir():
                found.extend(_tree_sources(path, stack, not_mail))
            elif path.is_file():
                found.extend(_file_sources(path, stack))
            else:
                unreadable.append(f"{path}: no such file or folder")
        except (OSError, mailbox.Error) as exc:
            unreadable.append(f"{path}: {exc}")
    return found


# --- reading what ordering and de-duplication need -------------------------------------------------------------


def _bare_address(value: str) -> str:
    _, address = email.utils.parseaddr(value)
    return address.strip().lower()


def _header(headers: Message, name: str) -> str | None:
    try:
        value = headers.get(name)
    except Exception:  # a malformed header the policy cannot parse
        return None
    return None if value is None else unfold(str(value))


def _raw_header(headers: Message, name: str) -> str | None:
    """The first value as written (what mail.parse reads the Message-ID from), not as the policy parses it."""
    lname = name.lower()
    for key, value in headers.raw_items():
        if key.lower() == lname:
            return unfold(recover_8bit(str(value)))
    return None


def _envelope_sender(headers: Message, mbox_sender: str | None) -> str:
    """What an MTA would have given as MAIL FROM: Return-Path, else the mbox "From " line, else From.

    "" (the null sender of bounces) only where Return-Path says <>. The "From " line's MAILER-DAEMON proves
    nothing: mail tools (Python's mailbox among them) write it on every message they store.
    """
    return_path = _header(headers, "Return-Path")
    if return_path is not None:
        return _bare_address(return_path)
    if mbox_sender and "@" in mbox_sender:
        return mbox_sender.strip("<>").lower()
    from_value = _raw_header(headers, "From") or ""
    address = _bare_address(from_value)
    if "@" not in address and (obfuscated := deobfuscated_sender(from_value)) is not None:
        return obfuscated[1]
    return address


def _date(headers: Message) -> datetime | None:
    value = _header(headers, "Date")
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def read_header(raw: bytes, *, mbox_sender: str | None = None) -> _Header:
    """The Message-ID (as mail.parse computes it), sha256, date and envelope sender of one message."""
    digest = hashlib.sha256(raw).hexdigest()
    head = _LEADING_BLANK_LINES_RE.sub(b"", raw[:_HEADER_BYTES])
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
    return _Header(
        message_id=normalize_message_id(_raw_header(headers, "Message-ID")) or f"{digest[:32]}@sha256.invalid",
        sha256=digest,
        date=_date(headers),
        envelope_from=_envelope_sender(headers, mbox_sender),
        size=len(raw),
        subject_tag=subject_tag(_header(headers, "Subject") or ""),
        list_id=_header(headers, "List-Id"),
        raw_from=_raw_header(headers, "From") or "",
    )


def archive_adjusted(parsed: ParsedMail, *, raw_from: str, strip_tags: frozenset[str]) -> ParsedMail:
    """The parsed message as the archive meant it: an obfuscated sender read as an address, the list tag off."""
    if not parsed.from_address:
        sender = deobfuscated_sender(raw_from)
        if sender is not None:
            parsed = dataclasses.replace(parsed, from_name=sender[0], from_address=sender[1])
    if strip_tags:
        subject = strip_subject_tags(parsed.subject, strip_tags)
        if subject != parsed.subject:
            parsed = dataclasses.replace(parsed, subject=subject)
    return parsed


# --- what became of each message -----------------------------------------------------------------------------


def skip_reason(outcome: Outcome) -> str | None:
    """None for a new post, "duplicate", or why the message was not posted, in a few words."""
    if outcome.disposition == Disposition.ACCEPTED:
        return None
    reason = outcome.reason
    if outcome.disposition in (Disposition.DISCARDED, Disposition.HELD):
        if reason.startswith("duplicate"):
            return "duplicate"
        kind = reason.partition(":")[0].strip()
        return {"auto_reply": "automatic", "bounce": "bounce", "loop": "loop"}.get(kind, reason or "discarded")
    reply = outcome.reply
    named = {NO_FROM: "no sender", ONLY_SIGNATURE: "only a signature", EMPTY_REPLY: "empty"}
    if reply in named:
        return named[reply]
    if not reply.is_permanent:
        return "temporary failure"
    if (reply.code, reply.enhanced) == (ATTACHMENT_REFUSED.code, ATTACHMENT_REFUSED.enhanced):
        return "attachment refused"
    by_code = {"5.6.0": "empty", "5.3.4": "too large", "5.7.1": "sender not allowed", "5.1.1": "unknown recipient"}
    return by_code.get(reply.enhanced, reply.text)


async def _staged_users(deps: Deps) -> int:
    async with deps.sessions() as session:
        count = await session.scalar(select(func.count(User.id)).where(User.status == UserStatus.STAGED.value))
    return int(count or 0)


async def _already_imported(deps: Deps, header: _Header) -> bool:
    async with deps.sessions() as session:
        found = await session.scalar(
            select(InboundMessage.id)
            .where(InboundMessage.message_id == header.message_id, InboundMessage.sha256 == header.sha256)
            .limit(1)
        )
    return found is not None


def _sort_key(item: tuple[int, _Header]) -> tuple[int, float, int]:
    index, header = item
    if header.date is None:
        return 1, 0.0, index
    return 0, header.date.timestamp(), index


async def import_paths(
    deps: Deps, paths: Sequence[Path | str], *, category_slug: str, progress: Progress | None = None,
    strip_subject_tag: bool = True,
) -> ImportReport:
    """Import every message found under `paths` into the category `category_slug`; see the module docstring."""
    slug = category_slug.lower()
    async with deps.sessions() as session:
        if await queries.category_by_slug(session, slug) is None:
            raise UnknownCategory(f"no category {slug!r}")
    await deps.categories.slugs(must_contain=slug)
    recipient = f"{slug}@{deps.settings.site.domain}"
    max_size = deps.settings.smtp.max_message_size
    unreadable: list[str] = []
    not_mail: list[str] = []
    skipped: Counter[str] = Counter()
    skipped_messages: list[tuple[str, str]] = []
    imported = duplicates = 0
    staged_before = await _staged_users(deps)
    with ExitStack() as stack:
        sources = _sources([Path(p) for p in paths], stack, unreadable, not_mail)
        headers: list[tuple[int, _Header]] = []
        for index, source in enumerate(sources):
            try:
                raw, mbox_sender = source.load()
                headers.append((index, read_header(raw, mbox_sender=mbox_sender)))
            except (OSError, mailbox.Error) as exc:
                unreadable.append(f"{source.label}: {exc}")
        order = sorted(headers, key=_sort_key)
        total = len(order)
        tags = (list_tags((h.subject_tag for _, h in headers), (h.list_id for _, h in headers))
                if strip_subject_tag else frozenset())
        for done, (index, header) in enumerate(order, start=1):
            source = sources[index]
            if progress is not None:
                progress(done, total)
            if header.size > max_size:
                skipped["too large"] += 1
                skipped_messages.append((source.label, "too large"))
                continue
            if await _already_imported(deps, header):
                duplicates += 1
                continue
            try:
                raw, _ = source.load()
                parsed = archive_adjusted(await parse(raw, deps), raw_from=header.raw_from, strip_tags=tags)
                result = await ingest(raw, envelope_from=header.envelope_from, recipients=[recipient],
                                      source=SOURCE, deps=deps, parsed=parsed)
            except (OSError, mailbox.Error) as exc:
                unreadable.append(f"{source.label}: {exc}")
                continue
            except Exception as exc:  # one bad message must not stop an archive import; it is reported
                log.exception("import.failed label=%s", source.label)
                skipped[f"error ({type(exc).__name__})"] += 1
                skipped_messages.append((source.label, f"error ({type(exc).__name__})"))
                continue
            reason = skip_reason(result.outcomes[recipient])
            if reason is None:
                imported += 1
            elif reason == "duplicate":
                duplicates += 1
            else:
                skipped[reason] += 1
                skipped_messages.append((source.label, reason))
    if not_mail:
        skipped["not a message"] += len(not_mail)
        skipped_messages += [(path, "not a message") for path in not_mail]
    report = ImportReport(
        messages=total + len(not_mail),
        imported=imported,
        duplicates=duplicates,
        skipped=dict(skipped.most_common()),
        unreadable=tuple(unreadable),
        staged_users=await _staged_users(deps) - staged_before,
        category=slug,
        skipped_messages=tuple(skipped_messages),
        stripped_tags=tuple(sorted(tags)),
    )
    log.info("import.done category=%s messages=%d imported=%d duplicates=%d skipped=%d", slug, report.messages,
             imported, duplicates, sum(skipped.values()))
    return report
