"""Running it for real: the installation salt of minted Message-IDs, retention, /metrics and /healthz, `stats`,
the admin commands (category set/remove, user set/erase, bounces in user show), `imap poll --once`, and the
commands that read the shared corpora when that folder is absent."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from qaflow_mail.cli import build_parser
from qaflow_mail.commands.common import CommandError, in_session
from qaflow_mail.config import ConfigError, ImapSettings, Settings, load_settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.installation import message_id_salt
from qaflow_mail.db.migrate import upgrade
from qaflow_mail.db.models import (
    ANNOUNCEMENTS_SLUG,
    BounceRecord,
    Category,
    CategorySubscription,
    Disposition,
    InboundFailure,
    InboundMessage,
    Installation,
    Outbox,
    OutboxBody,
    OutboxStatus,
    PendingReference,
    Post,
    Topic,
    User,
    UserStatus,
)
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.server.app import Running, running
from qaflow_mail.server.http import http_server
from qaflow_mail.services.retention import KEPT_BODY_BYTES, prune
from qaflow_mail.services.topics import reply_message_ids
from tests.dovecot import Dovecot
from tests.integration.test_shunt import breaking_trimmer, poison  # noqa: F401  (a fixture, used by name)
from tests.smtp_client import make_mail, send

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "forum.test"
ALICE, BOB = "alice@example.org", "bob@example.net"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=40)


def cli(settings: Settings, *argv: str) -> int:
    args: argparse.Namespace = build_parser().parse_args(list(argv))
    status: int = args.func(settings, args)
    return status


async def forum_rows(session: AsyncSession) -> tuple[Category, User, User]:
    general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
    alice = await queries.add_user(session, email=ALICE, display_name="Alice", now=OLD)
    bob = await queries.add_user(session, email=BOB, display_name="Bob", now=OLD)
    return general, alice, bob


async def add_post(session: AsyncSession, category: Category, author: User, message_id: str, *, at: datetime) -> Post:
    topic = await queries.create_topic(session, category_id=category.id, author_id=author.id, subject="Q", now=at)
    post = Post(topic_id=topic.id, author_id=author.id, message_id=message_id, body_text="Hello", created_at=at)
    session.add(post)
    await session.flush()
    return post


# --- 1. the installation salt ---------------------------------------------------------------------------------


async def test_minted_ids_carry_the_salt_of_this_database_and_stay_the_same_across_restarts(
    settings: Settings, tmp_path: Path
) -> None:
    async def stored(session: AsyncSession) -> str:
        return str(await session.scalar(select(Installation.message_id_salt)))

    async with running(settings) as first:
        salt = first.deps.settings.site.message_id_salt
        assert re.fullmatch(r"[0-9a-f]{16}", salt) and await in_session(settings, stored) == salt
        async with first.deps.sessions() as session, session.begin():
            general, alice, _bob = await forum_rows(session)
            post = await add_post(session, general, alice, "q1@client.test", at=NOW)
            minted = (await reply_message_ids(session, first.deps.settings, [post.id]))[post.id]
    assert minted == make_message_id("post", str(post.id), domain=DOMAIN, salt=salt)
    assert minted != make_message_id("post", str(post.id), domain=DOMAIN, salt="")
    async with running(settings) as again, again.deps.sessions() as session:  # a restart: the post keeps its id
        assert (await reply_message_ids(session, again.deps.settings, [post.id]))[post.id] == minted

    # A recreated database (a new file here) has another salt, so its post 1 gets another Message-ID.
    other = dataclasses.replace(settings, database=dataclasses.replace(
        settings.database, url=f"sqlite+aiosqlite:///{tmp_path / 'recreated.db'}"))
    await asyncio.to_thread(upgrade, other.database.url)
    assert await in_session(other, stored) not in {salt, ""}


async def test_a_missing_salt_row_is_written_once_and_the_salt_is_not_a_config_key(
    settings: Settings, tmp_path: Path
) -> None:
    async def drop(session: AsyncSession) -> None:
        await session.execute(delete(Installation))

    await in_session(settings, drop)
    engine = create_engine(settings.database.url)
    try:
        sessions = session_factory(engine)
        first = await message_id_salt(sessions)
        assert first and await message_id_salt(sessions) == first
    finally:
        await engine.dispose()
    config = tmp_path / "qaflow.toml"
    config.write_text('[site]\nmessage_id_salt = "chosen"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(config, {})


# --- 2. retention ------------------------------------------------------------------------------------------------


def big_mail(size: int) -> bytes:
    return b"From: a@example.org\r\nSubject: big\r\n\r\n" + b"x" * size


async def test_retention_prunes_what_is_old_keeps_the_rest_and_a_dry_run_changes_nothing(settings: Settings) -> None:
    async def arrange(session: AsyncSession) -> None:
        general, alice, bob = await forum_rows(session)
        # Shared bodies: one named only by rows pruned, one also by a row kept, one by none but new.
        bodies = {name: OutboxBody(data=name.encode(), created_at=at) for name, at in
                  (("body-old", OLD), ("body-kept", OLD), ("body-new", NOW))}
        session.add_all(bodies.values())
        await session.flush()
        for key, status, sent_at, body in (("old-sent", OutboxStatus.SENT, OLD, "body-old"),
                                           ("new-sent", OutboxStatus.SENT, NOW, "body-kept"),
                                           ("old-failed", OutboxStatus.FAILED, None, "body-kept"),
                                           ("old-pending", OutboxStatus.PENDING, None, None)):
            session.add(Outbox(kind="notice", dedupe_key=key, message_id=f"{key}@forum.test", envelope_from="b@f.t",
                               recipient=BOB, raw=b"x", status=status.value, sent_at=sent_at, next_attempt_at=OLD,
                               created_at=OLD, body_id=bodies[body].id if body else None))
        for mid, disposition, at in (("refused-old", Disposition.REJECTED, OLD),
                                     ("discarded-old", Disposition.DISCARDED, OLD),
                                     ("refused-new", Disposition.REJECTED, NOW),
                                     ("accepted-old", Disposition.ACCEPTED, OLD),
                                     ("shunted-old", Disposition.SHUNTED, OLD)):
            session.add(InboundMessage(message_id=mid, sha256=mid, disposition=disposition.value, received_at=at,
                                       raw=big_mail(200_000)))
        old_post = await add_post(session, general, alice, "orphan-old@c.test", at=OLD)
        new_post = await add_post(session, general, bob, "orphan-new@c.test", at=NOW - timedelta(minutes=5))
        session.add_all([PendingReference(post_id=old_post.id, message_id="never-seen@c.test"),
                         PendingReference(post_id=new_post.id, message_id="not-yet@c.test")])
        session.add_all([InboundFailure(sha256="f-old", message_id="f-old", attempts=1, first_failed_at=OLD,
                                        last_failed_at=OLD),
                         InboundFailure(sha256="f-new", message_id="f-new", attempts=1, first_failed_at=NOW,
                                        last_failed_at=NOW)])

    await in_session(settings, arrange)

    async def run(dry_run: bool) -> Any:
        async def work(session: AsyncSession) -> Any:
            return await prune(session, settings.retention, now=NOW, dry_run=dry_run)
        return await in_session(settings, work)

    dry = await run(True)
    assert (dry.outbox_deleted, dry.outbox_bodies_deleted, dry.refused_inbound_trimmed, dry.accepted_inbound_trimmed,
            dry.pending_references_deleted, dry.inbound_failures_deleted) == (2, 1, 2, 0, 1, 1)
    assert dry.bytes_freed == 2 * (200_000 - KEPT_BODY_BYTES)

    async def state(session: AsyncSession) -> dict[str, Any]:
        return {
            "outbox": sorted((await session.scalars(select(Outbox.dedupe_key))).all()),
            "bodies": sorted((await session.scalars(select(OutboxBody.data))).all()),
            "raw": dict((await session.execute(
                select(InboundMessage.message_id, func.length(InboundMessage.raw)))).all()),
            "refs": sorted((await session.scalars(select(PendingReference.message_id))).all()),
            "failures": sorted((await session.scalars(select(InboundFailure.sha256))).all()),
        }

    before = await in_session(settings, state)
    assert before["outbox"] == ["new-sent", "old-failed", "old-pending", "old-sent"]

    report = await run(False)
    assert dataclasses.replace(report, dry_run=True) == dry
    after = await in_session(settings, state)
    assert after["outbox"] == ["new-sent", "old-pending"]
    assert after["bodies"] == [b"body-kept", b"body-new"]
    header = len(b"From: a@example.org\r\nSubject: big\r\n\r\n")
    assert after["raw"] == {"refused-old": header + KEPT_BODY_BYTES, "discarded-old": header + KEPT_BODY_BYTES,
                            "refused-new": before["raw"]["refused-new"],
                            "accepted-old": before["raw"]["accepted-old"],
                            "shunted-old": before["raw"]["shunted-old"]}  # shunt retry needs the whole message
    assert after["refs"] == ["not-yet@c.test"] and after["failures"] == ["f-new"]

    again = await run(False)  # idempotent: nothing left to do
    assert (again.outbox_deleted, again.outbox_bodies_deleted, again.refused_inbound_trimmed, again.bytes_freed,
            again.pending_references_deleted, again.inbound_failures_deleted) == (0, 0, 0, 0, 0, 0)


def test_retention_run_command_reports_as_json(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(settings, "retention", "run", "--dry-run", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "outbox_deleted": 0, "outbox_bodies_deleted": 0, "accepted_inbound_trimmed": 0,
        "refused_inbound_trimmed": 0, "bytes_freed": 0,
        "pending_references_deleted": 0, "inbound_failures_deleted": 0, "dry_run": True}


# --- 3. /metrics, /healthz, stats ----------------------------------------------------------------------------------


@pytest.fixture
async def web(gateway: Running) -> AsyncIterator[str]:
    async with http_server(gateway.deps) as port:
        yield f"http://127.0.0.1:{port}"


_SAMPLE = re.compile(r'qaflow_mail_[a-z_]+(\{[a-z_]+="[^"\\\n]*"(,[a-z_]+="[^"\\\n]*")*\})? -?[0-9.e+]+')


async def test_metrics_count_what_happened_in_the_prometheus_text_format(gateway: Running, web: str) -> None:
    async with gateway.deps.sessions() as session, session.begin():
        await forum_rows(session)
    accepted = make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="Hello", body="A question.",
                         message_id="<m1@client.test>")
    assert (await send(gateway.smtp_port, accepted, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])).data_code == 250
    stranger = make_mail(sender="eve@evil.example", to=f"general@{DOMAIN}", subject="Hi", body="Spam.",
                         message_id="<m2@client.test>")
    assert (await send(gateway.smtp_port, stranger, mail_from="eve@evil.example",
                       rcpt_tos=[f"general@{DOMAIN}"])).data_code == 550

    async with aiohttp.ClientSession() as client:
        async with client.get(web + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = await response.text()
        async with client.get(web + "/healthz") as response:
            assert (response.status, await response.text()) == (200, "ok\n")
    for line in body.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or _SAMPLE.fullmatch(line), line
    assert 'qaflow_mail_inbound_messages{disposition="accepted"} 1' in body
    assert 'qaflow_mail_inbound_messages{disposition="rejected"} 1' in body
    assert 'qaflow_mail_inbound_messages{disposition="shunted"} 0' in body
    assert 'qaflow_mail_posts{status="published"} 1' in body
    assert 'qaflow_mail_users{status="active"} 2' in body
    assert "qaflow_mail_outbox_oldest_pending_age_seconds " in body
    assert ALICE not in body


async def test_healthz_and_metrics_answer_503_when_the_database_is_down(gateway: Running) -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    deps = dataclasses.replace(gateway.deps, sessions=async_sessionmaker(engine))
    try:
        async with http_server(deps) as port, aiohttp.ClientSession() as client:
            for path in ("/healthz", "/metrics"):
                async with client.get(f"http://127.0.0.1:{port}{path}") as response:
                    text = await response.text()
                    assert response.status == 503 and text.startswith("database unavailable"), (path, text)
                    assert "127.0.0.1:1" not in text and "nobody" not in text
    finally:
        await engine.dispose()


def test_stats_shows_the_same_figures(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    async def arrange(session: AsyncSession) -> None:
        general, alice, _bob = await forum_rows(session)
        await add_post(session, general, alice, "s1@client.test", at=NOW)
        session.add(Outbox(kind="notice", dedupe_key="k", message_id="k@forum.test", envelope_from="b@f.t",
                           recipient=BOB, raw=b"x", created_at=datetime.now(UTC) - timedelta(seconds=90)))

    asyncio.run(in_session(settings, arrange))
    assert cli(settings, "stats", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["posts_by_status"]["published"] == 1 and data["users_by_status"]["active"] == 2
    assert data["outbox_by_status"]["pending"] == 1 and data["outbox_pending_by_kind"] == {"notice": 1}
    assert 90 <= data["oldest_pending_outbox_seconds"] < 600
    assert data["retention_due"]["outbox_deleted"] == 0
    assert cli(settings, "stats") == 0
    assert "shunted      0" in capsys.readouterr().out


# --- 4. admin commands -------------------------------------------------------------------------------------------


def test_category_set_and_remove(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    async def arrange(session: AsyncSession) -> None:
        general, alice, bob = await forum_rows(session)
        await queries.add_category(session, slug="empty", name="Empty", allow_strangers=False)
        await queries.add_category(session, slug=ANNOUNCEMENTS_SLUG, name="News", allow_strangers=False)
        root = await add_post(session, general, alice, "r1@client.test", at=NOW)
        session.add(Post(topic_id=root.topic_id, author_id=bob.id, parent_id=root.id, message_id="r2@client.test",
                         body_text="Answer", created_at=NOW))
        session.add(CategorySubscription(user_id=bob.id, category_id=general.id))

    asyncio.run(in_session(settings, arrange))
    assert cli(settings, "category", "set", "general", "--name", "General talk", "--allow-strangers") == 0
    assert cli(settings, "category", "set", "general", "--members-only") == 0

    async def general(session: AsyncSession) -> tuple[str, bool]:
        found = await queries.category_by_slug(session, "general")
        assert found is not None
        return found.name, found.allow_strangers

    assert asyncio.run(in_session(settings, general)) == ("General talk", False)
    with pytest.raises(CommandError, match="nothing to change"):
        cli(settings, "category", "set", "general")
    with pytest.raises(CommandError, match="1 topic"):
        cli(settings, "category", "remove", "general")
    with pytest.raises(CommandError, match="cannot be removed"):
        cli(settings, "category", "remove", ANNOUNCEMENTS_SLUG, "--force")
    with pytest.raises(CommandError, match="no category"):
        cli(settings, "category", "remove", "nope")
    capsys.readouterr()
    assert cli(settings, "category", "remove", "empty") == 0
    assert cli(settings, "category", "remove", "general", "--force") == 0
    assert "with 1 topic(s) and 2 post(s)" in capsys.readouterr().out

    async def left(session: AsyncSession) -> tuple[list[str], int, int, int]:
        slugs = sorted((await session.scalars(select(Category.slug))).all())
        counts = [int(await session.scalar(select(func.count()).select_from(model)) or 0)
                  for model in (Topic, Post, CategorySubscription)]
        return slugs, counts[0], counts[1], counts[2]

    assert asyncio.run(in_session(settings, left)) == ([ANNOUNCEMENTS_SLUG], 0, 0, 0)


def test_user_set_show_and_erase(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    async def arrange(session: AsyncSession) -> int:
        general, alice, _bob = await forum_rows(session)
        await add_post(session, general, alice, "a1@client.test", at=NOW)
        session.add(CategorySubscription(user_id=alice.id, category_id=general.id))
        session.add(BounceRecord(user_id=alice.id, address=ALICE, kind="hard", diagnostic="550 5.1.1 no such user",
                                 received_at=NOW))
        session.add(InboundMessage(message_id="a1@client.test", sha256="s", from_address=ALICE, envelope_from=ALICE,
                                   disposition="accepted", raw=b"From: Alice <alice@example.org>\r\n\r\nHi"))
        session.add(Outbox(kind="notification", dedupe_key="n", message_id="n@forum.test", envelope_from="b@f.t",
                           recipient=ALICE, user_id=alice.id, raw=b"To: alice@example.org"))
        return alice.id

    alice_id = asyncio.run(in_session(settings, arrange))
    assert cli(settings, "user", "set", ALICE, "--disable", "--admin", "--name", "Alice A.") == 0
    assert cli(settings, "user", "show", ALICE, "--json") == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the `user set` line
    assert (shown["status"], shown["admin"], shown["name"]) == (UserStatus.DISABLED, True, "Alice A.")
    assert [(b["kind"], b["diagnostic"]) for b in shown["bounces"]] == [("hard", "550 5.1.1 no such user")]
    assert cli(settings, "user", "set", ALICE, "--enable", "--no-admin") == 0
    assert cli(settings, "user", "show", ALICE) == 0
    assert "bounce " in capsys.readouterr().out

    assert cli(settings, "user", "erase", ALICE) == 0
    with pytest.raises(CommandError, match="no user"):
        cli(settings, "user", "show", ALICE)

    async def traces(session: AsyncSession) -> list[Any]:
        user = await session.get(User, alice_id)
        assert user is not None
        raw = await session.scalar(select(InboundMessage.raw))
        found = [user.email, user.display_name, user.status, user.is_admin, raw]
        for model in (CategorySubscription, BounceRecord, Outbox):
            found.append(int(await session.scalar(select(func.count()).select_from(model)) or 0))
        found.append(await session.scalar(select(func.count()).select_from(Post).where(Post.author_id == alice_id)))
        return found

    assert asyncio.run(in_session(settings, traces)) == [
        f"erased-{alice_id}@erased.invalid", "Removed user", UserStatus.DISABLED, False, b"", 0, 0, 0, 1]


# --- 5. imap poll --once ---------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("breaking_trimmer")
def test_imap_poll_once_moves_a_shunted_message_to_the_failed_mailbox(
    settings: Settings, dovecot: Dovecot, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(in_session(settings, forum_rows))
    imap = ImapSettings(host=dovecot.host, port=dovecot.port, ssl=False, username=dovecot.user,
                        password=dovecot.password, processed_mailbox="Done", failed_mailbox="Failed")
    settings = dataclasses.replace(settings, imap=imap,
                                   limits=dataclasses.replace(settings.limits, shunt_after_failures=1))
    dovecot.deliver(poison())
    dovecot.deliver(make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="Fine", body="A fine question.",
                              message_id="<fine@client.test>").as_bytes())
    assert cli(settings, "imap", "poll", "--once", "--json") == 0
    assert json.loads(capsys.readouterr().out)["ingested"] == 2
    assert dovecot.messages() == []
    assert len(dovecot.messages("Failed")) == 1 and len(dovecot.messages("Done")) == 1

    async def dispositions(session: AsyncSession) -> list[str]:
        return sorted((await session.scalars(select(InboundMessage.disposition))).all())

    assert asyncio.run(in_session(settings, dispositions)) == [Disposition.ACCEPTED, Disposition.SHUNTED]

    wrong = dataclasses.replace(settings, imap=dataclasses.replace(imap, password="wrong"))
    with pytest.raises(CommandError, match=r"IMAP .*LOGIN"):
        cli(wrong, "imap", "poll", "--once")


# --- 6. the shared corpora absent ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["-m", "qaflow_mail", "check-corpus", "{missing}"],
    ["bench/corpus_automatic.py", "--corpora", "{missing}"],
    ["bench/corpus_content.py", "{missing}"],
    ["bench/corpus_threading.py", "--corpora", "{missing}"],
])
def test_reading_absent_corpora_is_one_line_and_a_failure(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "shared" / "corpora"
    argv = [part.format(missing=missing) for part in command]
    result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "corpora" in result.stderr and str(missing) in result.stderr
