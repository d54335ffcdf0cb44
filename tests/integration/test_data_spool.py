"""DATA arrives into a spool, byte for byte however the client cuts it; a message too big is refused after its last
byte; a message finding no room within [smtp] max_bytes_in_flight waits, then gets 452 4.3.1."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import InboundMessage
from qaflow_mail.pipeline.ingest import REFUSED_RAW_BODY_BYTES
from qaflow_mail.server.app import Running
from qaflow_mail.server.data_spool import STREAM_LIMIT, unstuff
from qaflow_mail.server.mail_budget import MailBudget
from qaflow_mail.server.smtp import start_smtp
from tests.conftest import open_general
from tests.smtp_client import send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE = "alice@example.org"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    smtp = dataclasses.replace(settings.smtp, max_message_size=2 * 1024 * 1024, spool_threshold=4096)
    return dataclasses.replace(settings, smtp=smtp)


@pytest.fixture
async def forum(gateway: Running) -> Running:
    return await open_general(gateway, member=ALICE)


def awkward_mail(message_id: str) -> bytes:
    """Lines that start with dots, a lone dot line, an empty line, and a line longer than the stream buffer."""
    body = [".leading dot", "..two dots", ".", "", "x" * (STREAM_LIMIT * 3 + 17), "a" * 70, ".\t.", "end"]
    head = f"From: {ALICE}\r\nTo: {GENERAL}\r\nSubject: dots\r\nMessage-ID: <{message_id}>\r\n\r\n"
    return head.encode() + "\r\n".join(body).encode() + b"\r\n"


def stuffed(raw: bytes) -> bytes:
    lines = raw.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


async def stored_raw(forum: Running, message_id: str) -> bytes:
    async with forum.deps.sessions() as session:
        raw = await session.scalar(select(InboundMessage.raw).where(InboundMessage.message_id == message_id))
    assert raw is not None
    return bytes(raw)


async def send_in_pieces(port: int, raw: bytes, *, seed: int) -> list[bytes]:
    """Speak SMTP by hand, writing the stuffed DATA in pieces of 1-9 bytes around every line break; the replies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await reader.readline()]
    for command in (b"EHLO client.test", f"MAIL FROM:<{ALICE}>".encode(), f"RCPT TO:<{GENERAL}>".encode(), b"DATA"):
        writer.write(command + b"\r\n")
        line = await reader.readline()
        while line[3:4] == b"-":
            line = await reader.readline()
        replies.append(line)
    data = stuffed(raw) + b".\r\n"
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        near_break = data.find(b"\r\n", position)
        size = rng.randint(1, 9) if 0 <= near_break - position < 12 else rng.randint(1, 70_000)
        writer.write(data[position : position + size])
        await writer.drain()
        position += size
    # QUIT pipelined right behind the final dot: it must stay a command, not become data.
    writer.write(b"QUIT\r\n")
    replies.append(await reader.readline())
    replies.append(await reader.readline())
    writer.close()
    await writer.wait_closed()
    return replies


def test_unstuff_removes_one_leading_dot_per_line_across_pieces() -> None:
    assert unstuff(b"..a\r\n.b\r\nc.\r\n", b"\r\n") == b".a\r\nb\r\nc.\r\n"
    assert unstuff(b".x", b"\r\n") == b"x"
    assert unstuff(b".x", b"ab") == b".x"  # mid-line: the dot is text
    assert unstuff(b"\n.x", b"a\r") == b"\nx"  # the CRLF was cut between the pieces


async def test_a_message_arrives_byte_for_byte_through_the_spool(forum: Running) -> None:
    raw = awkward_mail("dots@client.test")
    conv = await send(forum.smtp_port, raw, mail_from=ALICE, rcpt_tos=[GENERAL])
    assert conv.data_code == 250, conv.data
    assert await stored_raw(forum, "dots@client.test") == raw


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_data_cut_into_any_pieces_arrives_whole_and_pipelined_commands_stay_commands(
    forum: Running, seed: int
) -> None:
    message_id = f"pieces{seed}@client.test"
    raw = awkward_mail(message_id)
    replies = await send_in_pieces(forum.smtp_port, raw, seed=seed)
    assert replies[4].startswith(b"354"), replies
    assert replies[5].startswith(b"250 2.0.0"), replies
    assert replies[6].startswith(b"221"), replies
    assert await stored_raw(forum, message_id) == raw


async def test_an_empty_message_is_taken_as_empty(forum: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", forum.smtp_port)
    await reader.readline()
    writer.write(f"HELO c\r\nMAIL FROM:<{ALICE}>\r\nRCPT TO:<{GENERAL}>\r\nDATA\r\n.\r\nQUIT\r\n".encode())
    lines = [await reader.readline() for _ in range(6)]
    writer.close()
    assert lines[4][:1] in (b"2", b"5"), lines  # an answer about the (empty) message, not a hang
    assert lines[5].startswith(b"221"), lines


async def test_a_message_over_the_size_limit_is_refused_after_its_last_byte(forum: Running) -> None:
    big = (f"From: {ALICE}\r\nTo: {GENERAL}\r\nSubject: big\r\n\r\n" + ("y" * 998 + "\r\n") * 2200).encode()
    conv = await send(forum.smtp_port, big, mail_from=ALICE, rcpt_tos=[GENERAL])
    assert conv.data is not None and conv.data[0] == 552 and conv.data[1].startswith("5.3.4"), conv.data
    async with forum.deps.sessions() as session:
        assert list((await session.scalars(select(InboundMessage))).all()) == []


async def test_mail_beyond_the_bytes_in_flight_waits_then_gets_452(forum: Running) -> None:
    deps = dataclasses.replace(
        forum.deps, settings=dataclasses.replace(
            forum.deps.settings, smtp=dataclasses.replace(forum.deps.settings.smtp, in_flight_wait=1.0)))
    budget = MailBudget(10_000)
    server = await start_smtp(deps, host="127.0.0.1", port=0, budget=budget)
    port = server.sockets[0].getsockname()[1]
    try:
        small = awkward_mail("budget@client.test")
        async with budget.hold(10_000, wait=0) as held:
            assert held
            conv = await send(port, small, mail_from=ALICE, rcpt_tos=[GENERAL])
            assert conv.data == (452, "4.3.1 Too much mail in progress; try again shortly")
            # Room comes while the message waits: it goes through.
            waiting = asyncio.create_task(send(port, small, mail_from=ALICE, rcpt_tos=[GENERAL]))
            deadline = time.monotonic() + 5
            while budget.waiting == 0:
                assert time.monotonic() < deadline, "the message never waited for room"
                await asyncio.sleep(0.01)  # poll interval of the deadline loop
        conv = await waiting
        assert conv.data_code == 250, conv.data
        assert budget.used == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_a_message_larger_than_the_whole_budget_goes_through_alone() -> None:
    budget = MailBudget(100)
    async with budget.hold(5_000, wait=0) as alone:
        assert alone
        async with budget.hold(1, wait=0.05) as second:
            assert not second
    assert budget.used == 0


async def test_a_refused_message_from_a_stranger_keeps_only_its_head_and_64_kb(forum: Running) -> None:
    async with forum.deps.sessions() as session, session.begin():
        await queries.add_category(session, slug="members", name="Members", allow_strangers=False)
    members = f"members@{DOMAIN}"
    head = f"From: stranger@elsewhere.example\r\nTo: {members}\r\nSubject: hi\r\nMessage-ID: <s@x.example>\r\n\r\n"
    raw = head.encode() + ("z" * 998 + "\r\n").encode() * 1500
    conv = await send(forum.smtp_port, raw, mail_from="stranger@elsewhere.example", rcpt_tos=[members])
    assert conv.data is not None and conv.data[0] == 550, conv.data
    kept = await stored_raw(forum, "s@x.example")
    assert kept == raw[: len(head) - 4 + REFUSED_RAW_BODY_BYTES]
