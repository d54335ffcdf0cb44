"""Permanent means permanent: a message beyond [limits] (MIME bombs, an HTML body no parser can read, one that
costs more than the CPU deadline) gets a 5xx naming why, on every try, and is recorded (bounded) with its error;
the gateway answers other senders meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db.models import Disposition, InboundFailure, InboundMessage, Post
from qaflow_mail.pipeline.ingest import REFUSED_RAW_BODY_BYTES
from qaflow_mail.server.app import Running
from tests.conftest import open_general
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE = "alice@example.org"
HEAD = f"From: {ALICE}\r\nTo: {GENERAL}\r\nSubject: bomb\r\nMIME-Version: 1.0\r\n"


# Twice what the costliest bomb below needs to be refused on a quiet machine (the 1,000-deep multipart, ~0.35 s),
# and under half of what the heavy HTML costs.
DEADLINE = 0.8


@pytest.fixture
def settings(settings: Settings) -> Settings:
    limits = dataclasses.replace(settings.limits, cpu_deadline=DEADLINE, cpu_inline_size=1024,
                                 max_html_size=4 * 1024 * 1024)
    # Every message here runs before its reply, however many arrive at once, so the refusal is the reply itself
    # (with the default "auto" one arriving beside another would be queued and its refusal recorded instead).
    smtp = dataclasses.replace(settings.smtp, max_message_size=8 * 1024 * 1024, accept="inline")
    return dataclasses.replace(settings, limits=limits, smtp=smtp)


@pytest.fixture
async def forum(gateway: Running) -> Running:
    return await open_general(gateway, member=ALICE)


def nested_multipart(depth: int) -> bytes:
    opening = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n" for i in range(depth))
    closing = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(depth)))
    return (HEAD + opening + "Content-Type: text/plain\r\n\r\nhello\r\n" + closing).encode()


def nested_rfc822(depth: int) -> bytes:
    return (HEAD + "Content-Type: message/rfc822\r\n\r\n" * depth + "Subject: inner\r\n\r\nhello\r\n").encode()


def html_mail(body: str, message_id: str = "<html@client.test>") -> bytes:
    return (HEAD + f"Message-ID: {message_id}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{body}\r\n").encode()


def many_parts(count: int) -> bytes:
    parts = "".join("--p\r\nContent-Type: text/plain\r\n\r\npart\r\n" for _ in range(count))
    return (HEAD + "Content-Type: multipart/mixed; boundary=p\r\n\r\n" + parts + "--p--\r\n").encode()


def huge_header(size: int) -> bytes:
    return (HEAD + "X-Filler: " + "a" * 70 + ("\r\n " + "a" * 70) * (size // 72) + "\r\n\r\nhello\r\n").encode()


BOMBS = {
    "multipart nested 1,000 deep": (nested_multipart(1000), "nested"),
    "message/rfc822 nested 1,000 deep": (nested_rfc822(1000), "nested"),
    "3,000 parts": (many_parts(3000), "3001 MIME parts"),
    "a 400 KB header block": (huge_header(400_000), "header block"),
    "an HTML body the parser asserts on": (html_mail("<![><img src=x>" + "\r\n<p>padding</p>" * 100), "read"),
    "an HTML body over max_html_size": (html_mail("<p>" + ("x" * 70 + "\r\n") * 62_000 + "</p>"), "HTML body"),
}


@pytest.mark.parametrize("name", list(BOMBS))
async def test_a_hostile_message_is_refused_for_good_and_recorded(forum: Running, name: str) -> None:
    raw, why = BOMBS[name]
    for _attempt in range(2):  # the same answer on a retry: never a 451 that makes the MTA try for days
        conv = await send(forum.smtp_port, raw, mail_from=ALICE, rcpt_tos=[GENERAL])
        assert conv.data is not None
        assert conv.data[0] == 554, conv.data
        assert conv.data[1].startswith("5.6.0") and why in conv.data[1]
    async with forum.deps.sessions() as session:
        records = list((await session.scalars(select(InboundMessage))).all())
        assert [r.disposition for r in records] == [Disposition.REJECTED] * 2
        assert all(why in r.reason for r in records)
        assert all(len(r.raw) <= len(raw) and len(r.raw) <= 400_000 + REFUSED_RAW_BODY_BYTES for r in records)
        assert list((await session.scalars(select(InboundFailure))).all()) == []  # not a failure to retry
        assert list((await session.scalars(select(Post))).all()) == []


async def test_a_message_costing_more_than_the_deadline_is_refused_while_others_are_answered(
    forum: Running,
) -> None:
    # Nested tags cost about half a second a megabyte to sanitise: 3.7 MB is well over the deadline.
    heavy = html_mail(("<div>" * 150 + "\r\n") * 4_900, "<heavy@client.test>")
    small = make_mail(sender=ALICE, to=GENERAL, subject="small", body="A small question while a bomb is read.")
    heavy_task = asyncio.create_task(send(forum.smtp_port, heavy, mail_from=ALICE, rcpt_tos=[GENERAL]))
    small_conv = await send(forum.smtp_port, small, mail_from=ALICE, rcpt_tos=[GENERAL])
    assert small_conv.data_code == 250
    assert not heavy_task.done()  # the small message was answered while the heavy one was still being read
    heavy_conv = await heavy_task
    assert heavy_conv.data is not None and heavy_conv.data[0] == 554, heavy_conv.data
    assert f"more than {DEADLINE:g} s of work" in heavy_conv.data[1]
