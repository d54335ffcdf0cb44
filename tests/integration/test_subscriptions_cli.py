"""`subscribe`, `unsubscribe`, `user show` and `user add --file` through the command line's own entry point."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail import cli, logs
from qaflow_mail.commands.common import CommandError, in_session
from qaflow_mail.commands.users import cmd_user_show
from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, CategorySubscription, User, UserAddress

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
Run = Callable[..., tuple[int, str, str]]


def seed(settings: Settings) -> None:
    async def work(session: AsyncSession) -> None:
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_category(session, slug="help", name="Help", allow_strangers=False)
        bob = await queries.add_user(session, email="bob@example.net", display_name="Bob", is_admin=True, now=NOW)
        session.add(UserAddress(user_id=bob.id, email="bob@work.example"))

    asyncio.run(in_session(settings, work))


def modes(settings: Settings) -> dict[tuple[str, str], str]:
    async def work(session: AsyncSession) -> dict[tuple[str, str], str]:
        rows = await session.execute(
            select(User.email, Category.slug, CategorySubscription.mode)
            .join(CategorySubscription, CategorySubscription.user_id == User.id)
            .join(Category, Category.id == CategorySubscription.category_id)
        )
        return {(email, slug): mode for email, slug, mode in rows}

    return asyncio.run(in_session(settings, work))


@pytest.fixture
def qaflow(settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `qaflow-mail ARGS` in-process against the test database."""
    seed(settings)
    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: None)
    for key in list(os.environ):
        if key.startswith("QAFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("QAFLOW_DATABASE__URL", settings.database.url)
    monkeypatch.setenv("QAFLOW_SITE__DOMAIN", settings.site.domain)
    monkeypatch.setenv("QAFLOW_TOKENS__SECRET", settings.tokens.secret)
    monkeypatch.setenv("QAFLOW_SITE__DATA_DIR", settings.site.data_dir)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli.main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_subscribe_and_unsubscribe_one_user(qaflow: Run, settings: Settings) -> None:
    status, out, _ = qaflow("subscribe", "Bob@Example.net", "--category", "general", "--mode", "daily")
    assert status == 0 and "general set to daily (new)" in out
    status, out, _ = qaflow("subscribe", "bob@work.example", "--category", "general")  # a further address: Bob
    assert status == 0 and "general set to each (was daily)" in out
    status, out, _ = qaflow("subscribe", "bob@example.net", "--category", "help", "--mode", "weekly", "--json")
    assert status == 0 and json.loads(out) == {"email": "bob@example.net", "category": "help", "mode": "weekly",
                                               "previous": None}
    assert modes(settings) == {("bob@example.net", "general"): "each", ("bob@example.net", "help"): "weekly"}

    status, out, _ = qaflow("unsubscribe", "bob@example.net", "--category", "general")
    assert status == 0 and "unsubscribed from general" in out
    status, out, _ = qaflow("unsubscribe", "bob@example.net", "--category", "general")
    assert status == 0 and "already unsubscribed" in out
    assert modes(settings)[("bob@example.net", "general")] == "mute"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("subscribe", "nobody@example.net", "--category", "general"), "no user 'nobody@example.net'"),
        (("subscribe", "bob@example.net", "--category", "nope"), "no category 'nope'"),
        (("subscribe", "--category", "general"), "give an EMAIL or --file PATH"),
        (("subscribe", "bob@example.net", "--file", "x.txt", "--category", "general"), "not both"),
        (("subscribe", "--file", "/nonexistent/list.txt", "--category", "general"), "cannot read"),
        (("unsubscribe", "bob@example.net", "--category", "nope"), "no category 'nope'"),
    ],
)
def test_mistakes_are_one_clear_line(qaflow: Run, settings: Settings, args: tuple[str, ...], message: str) -> None:
    status, _, err = qaflow(*args)
    assert status == 1
    assert message in err
    assert modes(settings) == {}


def test_invalid_mode_is_refused_by_the_parser(qaflow: Run) -> None:
    with pytest.raises(SystemExit) as exc:
        qaflow("subscribe", "bob@example.net", "--category", "general", "--mode", "hourly")
    assert exc.value.code == 2


def test_subscribe_file(qaflow: Run, settings: Settings, tmp_path: Path) -> None:
    listing = tmp_path / "members.txt"
    listing.write_text(
        "\ufeff# exported from the old list\nAnn <ann@example.org>\n\nbob@work.example\nnot-an-address\n"
        "ann@example.org\n",
        encoding="utf-8",
    )
    status, out, err = qaflow("subscribe", "--file", str(listing), "--category", "general", "--mode", "each")
    assert status == 2  # done, but some lines were bad
    assert "users: 1 created, 1 existing" in out and "subscriptions: 2 created" in out
    assert "line 5: not an email address" in err
    assert modes(settings) == {("ann@example.org", "general"): "each", ("bob@example.net", "general"): "each"}

    status, out, _ = qaflow("subscribe", "--file", str(listing), "--category", "general", "--mode", "mute",
                            "--json")
    report = json.loads(out)
    assert status == 2
    assert (report["users_created"], report["subscriptions_created"], report["subscriptions_existing"]) == (0, 0, 2)
    assert report["duplicates"] == 1
    assert report["bad"] == [{"line": 5, "text": "not-an-address", "reason": "not an email address (user@domain)"}]
    assert modes(settings)[("ann@example.org", "general")] == "each"  # existing subscriptions are kept


def test_user_show_and_user_add_file(qaflow: Run, settings: Settings, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    qaflow("subscribe", "bob@example.net", "--category", "help", "--mode", "daily")
    capsys.readouterr()
    assert cmd_user_show(settings, argparse.Namespace(email="BOB@work.example", json=True)) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {k: shown[k] for k in ("email", "name", "admin", "status", "bounce_score", "timezone")} == {
        "email": "bob@example.net", "name": "Bob", "admin": True, "status": "active", "bounce_score": 0.0,
        "timezone": None,
    }
    assert shown["addresses"] == ["bob@work.example"]
    assert shown["subscriptions"] == [{"category": "help", "mode": "daily", "last_digest_at": None}]

    assert cmd_user_show(settings, argparse.Namespace(email="bob@example.net", json=False)) == 0
    text = capsys.readouterr().out
    assert "bob@example.net" in text and "help" in text and "daily" in text

    with pytest.raises(CommandError, match="no user"):
        cmd_user_show(settings, argparse.Namespace(email="ghost@example.net", json=True))

    people = tmp_path / "people.txt"
    people.write_text("Zoë <zoe@example.org>\nbob@example.net\n\n# done\nbroken@\n", encoding="utf-8")
    status, out, _ = qaflow("user", "add", "--file", str(people), "--json")
    assert status == 2
    report = json.loads(out)
    assert (report["users_created"], report["users_existing"]) == (1, 1)
    assert [b["line"] for b in report["bad"]] == [5]
    assert cmd_user_show(settings, argparse.Namespace(email="zoe@example.org", json=True)) == 0
    zoe = json.loads(capsys.readouterr().out)
    assert (zoe["name"], zoe["status"], zoe["subscriptions"]) == ("Zoë", "active", [])
