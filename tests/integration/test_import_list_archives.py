"""Importing a real-shaped pipermail archive: obfuscated senders ("goran at example.com") are people, the list's
subject tag is stripped (or kept on request), the category used is named, and each skipped message says why."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db.models import Topic, User
from qaflow_mail.deps import Deps
from qaflow_mail.importer import import_paths, read_header
from tests.integration.test_import import cli, deps, post

__all__ = ["deps"]  # the fixture, shared with test_import

PIPERMAIL = """\
From goran at example.com  Mon Jan  1 10:00:00 2024
From: goran at example.com (Goran Ivanovic)
Date: Mon, 01 Jan 2024 10:00:00 +0100
Subject: [users@httpd] ProxyPass and websockets
Message-ID: <p1@example.com>

How do I proxy websockets with ProxyPass?

From jane at mail dot example dot org  Mon Jan  1 11:00:00 2024
From: Jane Roe <jane at mail dot example dot org>
Date: Mon, 01 Jan 2024 11:00:00 +0100
Subject: Re: [users@httpd] ProxyPass and websockets
In-Reply-To: <p1@example.com>
References: <p1@example.com>
Message-ID: <p2@example.org>

Use mod_proxy_wstunnel, or upgrade=websocket on 2.4.47 and later.

From nobody at example.com  Mon Jan  1 12:00:00 2024
From: nobody
Date: Mon, 01 Jan 2024 12:00:00 +0100
Subject: [users@httpd] who am I
Message-ID: <p3@example.com>

No address anywhere.

"""


def write_archive(tmp_path: Path) -> Path:
    path = tmp_path / "2024-January.txt"
    path.write_text(PIPERMAIL)
    return path


async def test_obfuscated_senders_are_people_and_the_list_tag_goes(deps: Deps, tmp_path: Path) -> None:
    archive = write_archive(tmp_path)
    report = await import_paths(deps, [archive], category_slug="general")
    assert report.imported == 2
    assert report.category == "general"
    assert report.stripped_tags == ("users@httpd",)
    assert report.skipped == {"no sender": 1}
    assert report.skipped_messages == ((f"{archive}#3", "no sender"),)
    question, answer = await post(deps, "p1@example.com"), await post(deps, "p2@example.org")
    assert answer.topic_id == question.topic_id
    async with deps.sessions() as session:
        topic = await session.get(Topic, question.topic_id)
        authors = set((await session.scalars(select(User.email))).all())
    assert topic is not None and topic.subject == "ProxyPass and websockets"
    assert {"goran@example.com", "jane@mail.example.org"} <= authors


async def test_keep_subject_tag(deps: Deps, tmp_path: Path) -> None:
    report = await import_paths(deps, [write_archive(tmp_path)], category_slug="general", strip_subject_tag=False)
    assert report.stripped_tags == ()
    question = await post(deps, "p1@example.com")
    async with deps.sessions() as session:
        topic = await session.get(Topic, question.topic_id)
    assert topic is not None and topic.subject == "[users@httpd] ProxyPass and websockets"


def test_envelope_sender_of_an_obfuscated_from() -> None:
    raw = b"From: goran at example.com (Goran)\nSubject: x\n\nbody\n"
    assert read_header(raw).envelope_from == "goran@example.com"


def test_import_command_names_the_category_and_each_skipped_message(settings: Settings, tmp_path: Path) -> None:
    archive = write_archive(tmp_path)
    assert cli(settings, "db", "upgrade").returncode == 0
    text = cli(settings, "import", str(archive))
    assert text.returncode == 0, text.stderr
    assert "category:     general (no --category given: the default)" in text.stdout
    assert f"skipped:      {archive}#3: no sender" in text.stdout
    assert "subject tag:  [users@httpd] stripped" in text.stdout
    other = tmp_path / "2024-February.txt"
    other.write_text(PIPERMAIL.replace("No address anywhere.", "Still no address."))
    again = cli(settings, "import", str(other), "--category", "general", "--json")
    summary = json.loads(again.stdout)
    assert summary["category"] == "general" and summary["category_given"] is True
    assert summary["duplicates"] == 2
    assert summary["skipped_messages"] == [{"message": f"{other}#3", "reason": "no sender"}]
