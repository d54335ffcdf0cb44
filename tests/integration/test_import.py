"""Importing an archive (an mbox, a Maildir with a sub-folder, a folder of .eml files) made by the test: every
message through the live pipeline, threads as live mail (a reply imported before its parent is re-attached),
staged users for unknown authors, duplicates and automatic mail skipped with reasons, nothing mailed to
subscribers, and a second import changes nothing."""

from __future__ import annotations

import json
import mailbox
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import (
    Category,
    CategorySubscription,
    InboundMessage,
    Outbox,
    OutboxKind,
    Post,
    SubscriptionMode,
    Topic,
    User,
    UserStatus,
)
from qaflow_mail.deps import Deps
from qaflow_mail.importer import ImportReport, UnknownCategory, import_paths, read_header
from qaflow_mail.mail.parse import parse_message
from tests.smtp_client import make_mail

REPO = Path(__file__).resolve().parents[2]
ALICE, BOB, CAROL, DAN = "alice@example.org", "bob@example.net", "carol@example.com", "dan@example.com"
ALL_TABLES = (Post, Topic, User, InboundMessage, Outbox)


def mail(sender: str, subject: str, body: str, mid: str, date: str | None, *, in_reply_to: str | None = None,
         headers: dict[str, str] | None = None) -> EmailMessage:
    msg = make_mail(sender=sender, to="dev@lists.example.org", subject=subject, body=body, message_id=f"<{mid}>",
                    in_reply_to=f"<{in_reply_to}>" if in_reply_to else None,
                    references=[f"<{in_reply_to}>"] if in_reply_to else (), headers=headers)
    if date:
        msg["Date"] = date
    return msg


BOUNCE = (
    b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\n"
    b"To: dev-owner@lists.example.org\n"
    b"Subject: Undelivered Mail Returned to Sender\n"
    b"Message-ID: <bounce-1@mx.example.net>\n"
    b"Date: Mon, 4 Mar 2024 12:00:00 +0000\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
    b"--b\nContent-Type: text/plain\n\nThe mail system: <gone@example.org>: user unknown\n\n"
    b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
    b"Final-Recipient: rfc822; gone@example.org\nAction: failed\nStatus: 5.1.1\n\n--b--\n"
)


def make_archive(root: Path) -> list[Path]:
    """An mbox, a Maildir (with a Maildir++ sub-folder) and a folder of .eml files with a README beside them."""
    root.mkdir(parents=True, exist_ok=True)
    box = mailbox.mbox(root / "dev.mbox")
    question = mail(ALICE, "Build fails on ARM", "The build fails with a linker error.", "q1@example.org",
                    "Mon, 4 Mar 2024 10:00:00 +0000")
    # Bob's clock ran an hour slow: his reply sorts (and is imported) before the question it answers.
    answer = mail(BOB, "Re: Build fails on ARM", "Use the gold linker.\n\nOn Mon, Alice wrote:\n> The build fails",
                  "a1@example.net", "Mon, 4 Mar 2024 09:00:00 +0000", in_reply_to="q1@example.org")
    copy = mail(ALICE, "Build fails on ARM", "The build fails with a linker error.", "q1@example.org",
                "Mon, 4 Mar 2024 10:00:00 +0000", headers={"X-Archived-Copy": "yes"})  # same id, other bytes
    vacation = mail(CAROL, "Out of office: Build fails on ARM", "Back on Monday.", "ooo@example.com",
                    "Mon, 4 Mar 2024 10:05:00 +0000", headers={"Auto-Submitted": "auto-replied"})
    empty = mail(DAN, "Re: Build fails on ARM", "On Mon, Alice wrote:\n> The build fails\n", "e1@example.com",
                 "Mon, 4 Mar 2024 11:00:00 +0000", in_reply_to="q1@example.org")
    for message in (question, answer, copy, vacation, empty):
        box.add(message)
    box.add(mailbox.mboxMessage(BOUNCE))
    box.close()

    maildir = mailbox.Maildir(root / "Maildir", create=True)
    maildir.add(mail(CAROL, "Docs typo", "The install page says 'pyhton'.", "d1@example.com",
                     "Tue, 5 Mar 2024 08:00:00 +0000"))
    archive = maildir.add_folder("Archive")
    archive.add(mail(ALICE, "Re: Docs typo", "Fixed, thanks!", "d2@example.org", "Tue, 5 Mar 2024 09:00:00 +0000",
                     in_reply_to="d1@example.com"))

    emls = root / "eml"
    emls.mkdir()
    (emls / "README.md").write_text("# Saved mail\n\nA few messages kept by hand.\n")
    (emls / "1.eml").write_bytes(
        mail(DAN, "Release date?", "When is 2.0 out?", "r1@example.com", None).as_bytes())
    return [root / "dev.mbox", root / "Maildir", emls]


@pytest.fixture
async def deps(settings: Settings) -> AsyncIterator[Deps]:
    engine = create_engine(settings.database.url)
    try:
        deps = Deps.build(settings, session_factory(engine))
        async with deps.sessions() as session, session.begin():
            general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
            alice = await queries.add_user(session, email=ALICE, display_name="Alice", now=datetime.now(UTC))
            session.add(CategorySubscription(user_id=alice.id, category_id=general.id, mode=SubscriptionMode.EACH))
        yield deps
    finally:
        await engine.dispose()


async def counts(deps: Deps) -> dict[str, int]:
    async with deps.sessions() as session:
        return {model.__tablename__: int(await session.scalar(select(func.count()).select_from(model)) or 0)
                for model in ALL_TABLES}


async def post(deps: Deps, message_id: str) -> Post:
    async with deps.sessions() as session:
        found = await session.scalar(select(Post).where(Post.message_id == message_id))
    assert found is not None, message_id
    return found


async def run_import(deps: Deps, paths: list[Path]) -> tuple[ImportReport, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    report = await import_paths(deps, paths, category_slug="general", progress=lambda done, total: seen.append(
        (done, total)))
    return report, seen


async def test_import_threads_stages_and_skips(deps: Deps, tmp_path: Path) -> None:
    report, progress = await run_import(deps, make_archive(tmp_path / "archive"))

    assert report.imported == 5  # Alice's question and Bob's answer, Carol's docs thread (2), Dan's question
    assert report.duplicates == 1
    assert report.skipped == {"automatic": 1, "bounce": 1, "empty": 1, "not a message": 1}
    assert report.messages == 10
    assert report.unreadable == ()
    assert report.staged_users == 3  # Bob, Carol, Dan
    assert progress[-1] == (9, 9) and [done for done, _ in progress] == list(range(1, 10))

    question, answer = await post(deps, "q1@example.org"), await post(deps, "a1@example.net")
    assert answer.topic_id == question.topic_id  # imported first, re-attached when the question came
    assert answer.parent_id == question.id
    docs, fix = await post(deps, "d1@example.com"), await post(deps, "d2@example.org")
    assert (fix.topic_id, fix.parent_id) == (docs.topic_id, docs.id)
    assert answer.source == "import"
    async with deps.sessions() as session:
        topics = (await session.scalars(select(Topic.subject).order_by(Topic.id))).all()
        users = {u.email: u.status for u in (await session.scalars(select(User))).all()}
        category = await queries.category_by_slug(session, "general")
    assert sorted(topics) == ["Build fails on ARM", "Docs typo", "Release date?"]
    assert users == {ALICE: UserStatus.ACTIVE, BOB: UserStatus.STAGED, CAROL: UserStatus.STAGED,
                     DAN: UserStatus.STAGED}
    assert isinstance(category, Category) and not category.allow_strangers  # only the import let them in


async def test_second_import_changes_nothing(deps: Deps, tmp_path: Path) -> None:
    paths = make_archive(tmp_path / "archive")
    await run_import(deps, paths)
    before = await counts(deps)
    again, _ = await run_import(deps, paths)
    assert await counts(deps) == before
    assert (again.imported, again.duplicates) == (0, 9)
    assert again.skipped == {"not a message": 1}


async def test_import_queues_no_notifications(deps: Deps, tmp_path: Path) -> None:
    """Alice follows the category post by post; an archive import must not mail her every old post."""
    await run_import(deps, make_archive(tmp_path / "archive"))
    async with deps.sessions() as session:
        queued = (await session.scalars(select(Outbox.kind))).all()
    assert OutboxKind.NOTIFICATION not in queued
    assert queued == []


async def test_missing_paths_and_unknown_category(deps: Deps, tmp_path: Path) -> None:
    report, _ = await run_import(deps, [tmp_path / "nothing-here.mbox"])
    assert report.messages == 0
    assert report.unreadable == (f"{tmp_path / 'nothing-here.mbox'}: no such file or folder",)
    with pytest.raises(UnknownCategory):
        await import_paths(deps, [tmp_path], category_slug="nosuch")


async def test_maildir_like_tree_and_single_files(deps: Deps, tmp_path: Path) -> None:
    """A tree like notmuch's test corpus: `cur/29:2,` names in nested folders without tmp/."""
    tree = tmp_path / "tree"
    (tree / "cur").mkdir(parents=True)
    (tree / "lists" / "new").mkdir(parents=True)
    (tree / "cur" / "1:2,S").write_bytes(
        mail(ALICE, "Tree root", "Root text.", "t1@example.org", "Mon, 4 Mar 2024 10:00:00 +0000").as_bytes())
    (tree / "lists" / "new" / "2:2,").write_bytes(
        mail(BOB, "Re: Tree root", "Reply text.", "t2@example.net", "Mon, 4 Mar 2024 11:00:00 +0000",
             in_reply_to="t1@example.org").as_bytes())
    single = tmp_path / "single.eml"
    single.write_bytes(b"From nobody Mon Mar  4 10:00:00 2024\n" + mail(
        CAROL, "With a From_ line", "An .eml that starts like an mbox.", "s1@example.com", None).as_bytes())
    report, _ = await run_import(deps, [tree, single])
    assert (report.imported, report.messages) == (3, 3)
    root, reply = await post(deps, "t1@example.org"), await post(deps, "t2@example.net")
    assert reply.parent_id == root.id


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it."""
    env = {
        "PATH": "/usr/bin:/bin",
        "QAFLOW_DATABASE__URL": settings.database.url,
        "QAFLOW_SITE__DOMAIN": settings.site.domain,
        "QAFLOW_SITE__DATA_DIR": settings.site.data_dir,
        "QAFLOW_TOKENS__SECRET": settings.tokens.secret,
        "QAFLOW_LOGGING__LEVEL": "WARNING",
    }
    return subprocess.run([sys.executable, "-m", "qaflow_mail", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_import_command(settings: Settings, tmp_path: Path) -> None:
    paths = [str(p) for p in make_archive(tmp_path / "archive")]
    assert cli(settings, "db", "upgrade").returncode == 0  # creates the default category "general"
    first = cli(settings, "import", *paths, "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["imported"], summary["duplicates"], summary["staged_users"]) == (5, 1, 4)  # Alice too
    assert summary["skipped"] == {"automatic": 1, "bounce": 1, "empty": 1, "not a message": 1}
    text = cli(settings, "import", *paths)
    assert text.returncode == 0, text.stderr
    assert "imported:     0" in text.stdout and "duplicates:   9" in text.stdout
    missing = cli(settings, "import", paths[0], "--category", "nosuch")
    assert missing.returncode == 1
    assert "no category 'nosuch'" in missing.stderr


@pytest.mark.parametrize(
    "head",
    [
        b"Message-ID: <019801ca633f$f4376140$dca623c0$@yang@example.com>\n",
        b"Message-ID:\n <folded.id@example.org>\n",
        b"Message-Id: bare-id@example.org\n",
        b"\n\nMessage-ID: <after-blank-lines@example.org>\n",
        b"Message-ID: <caf\xe9@example.org>\n",
        b"Subject: no id at all\n",
    ],
)
def test_read_header_finds_the_message_id_the_parser_finds(head: bytes) -> None:
    """The import's duplicate check looks messages up by the id ingest will store; the two must agree."""
    raw = head + b"From: a@example.org\nReturn-Path: <>\n\nbody\n"
    header = read_header(raw)
    assert header.message_id == parse_message(raw).message_id
    assert header.envelope_from == ""  # Return-Path <>: the null sender of a bounce


async def test_list_archive_mail_is_imported_and_keeps_its_date(deps: Deps, tmp_path: Path) -> None:
    """Every message of a list archive says `Precedence: list`; people wrote them all the same. Real automatic
    signs (Auto-Submitted) still keep a message out. Imported posts carry the date they were written."""
    box = mailbox.mbox(tmp_path / "list.mbox")
    listed = {"Precedence": "list", "List-Id": "<dev.lists.example.org>"}
    box.add(mail(ALICE, "Archived question", "Posted to the list.", "l1@example.org", "Tue, 2 Jan 2024 09:30:00 +0100",
                 headers=listed))
    box.add(mail(BOB, "Auto: away", "Away.", "l2@example.net", "Tue, 2 Jan 2024 10:00:00 +0000",
                 headers={**listed, "Auto-Submitted": "auto-replied"}))
    box.close()
    report, _ = await run_import(deps, [tmp_path / "list.mbox"])
    assert report.imported == 1
    assert report.skipped == {"automatic": 1}
    question = await post(deps, "l1@example.org")
    assert question.created_at == datetime(2024, 1, 2, 8, 30, tzinfo=UTC)
    async with deps.sessions() as session:
        topic = await session.get(Topic, question.topic_id)
    assert topic is not None and topic.last_post_at == question.created_at
