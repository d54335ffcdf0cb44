"""Automatic mail over loopback SMTP to a category address: accepted with 250 (never bounced, RFC 3834), recorded
as discarded, never posted. X-Auto-Response-Suppress alone is no sign: Exchange puts it on mail people write."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from qaflow_mail.db.models import Disposition, InboundMessage, Outbox, Post
from qaflow_mail.server.app import Running
from tests.conftest import open_general
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE = "alice@example.org"


@pytest.fixture
async def forum(gateway: Running) -> Running:
    return await open_general(gateway, member=ALICE, display_name="Alice")


def received(n: int) -> dict[str, str]:
    return {"Received": f"from relay{n}.example.net by relay{n + 1}.example.net; Mon, 4 Mar 2024 09:15:02 +0000"}


AUTOMATIC = {
    "auto-submitted auto-replied": ({"Auto-Submitted": "auto-replied (vacation)"}, "Re: Hello", "auto_reply"),
    "auto-submitted auto-generated": ({"Auto-Submitted": "auto-generated"}, "Build report", "auto_reply"),
    "precedence bulk": ({"Precedence": "bulk"}, "Newsletter", "auto_reply"),
    "precedence junk": ({"Precedence": "junk"}, "Re: Hello", "auto_reply"),
    "x-autoreply": ({"X-Autoreply": "yes"}, "Re: Hello", "auto_reply"),
    "x-autorespond": ({"X-Autorespond": "Hello"}, "Re: Hello", "auto_reply"),
    "out of office subject": ({}, "Out of Office: Hello", "auto_reply"),
    "automatic reply subject": ({}, "Automatic reply: Hello", "auto_reply"),
    "german subject": ({}, "Abwesenheitsnotiz: Hello", "auto_reply"),
    "french subject": ({}, "Réponse automatique : Hello", "auto_reply"),
    "our list-id": ({"List-Id": f"General <general.{DOMAIN}>"}, "Re: Hello", "loop"),
    "our x-loop": ({"X-Loop": f"qaflow@{DOMAIN}"}, "Re: Hello", "loop"),
}


async def stored(run: Running) -> tuple[int, list[InboundMessage]]:
    async with run.deps.sessions() as session:
        posts = int(await session.scalar(select(func.count(Post.id))) or 0)
        records = list((await session.scalars(select(InboundMessage).order_by(InboundMessage.id))).all())
    return posts, records


@pytest.mark.parametrize("case", sorted(AUTOMATIC))
async def test_automatic_mail_is_discarded_not_posted(forum: Running, case: str) -> None:
    headers, subject, kind = AUTOMATIC[case]
    msg = make_mail(sender=ALICE, to=GENERAL, subject=subject, body="I am away until Monday.", headers=headers)
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[GENERAL])
    assert conv.data_code == 250
    posts, (record,) = await stored(forum)
    assert posts == 0
    assert record.disposition == Disposition.DISCARDED
    assert record.reason.startswith(f"{GENERAL}: discarded {kind}")
    async with forum.deps.sessions() as session:
        assert (await session.scalars(select(Outbox))).all() == []  # never answered


async def test_null_envelope_sender_is_discarded(forum: Running) -> None:
    msg = make_mail(sender=ALICE, to=GENERAL, subject="Hello", body="A perfectly ordinary text.")
    conv = await send(forum.smtp_port, msg, mail_from="", rcpt_tos=[GENERAL])
    assert conv.data_code == 250
    posts, (record,) = await stored(forum)
    assert posts == 0
    assert record.disposition == Disposition.DISCARDED
    assert "null envelope sender" in record.reason


async def test_too_many_received_headers_is_a_loop(forum: Running) -> None:
    msg = make_mail(sender=ALICE, to=GENERAL, subject="Hello", body="Going round in circles.")
    for n in range(40):
        msg["Received"] = received(n)["Received"]
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[GENERAL])
    assert conv.data_code == 250
    posts, (record,) = await stored(forum)
    assert posts == 0
    assert "loop" in record.reason and "Received" in record.reason


async def test_a_few_received_headers_are_fine(forum: Running) -> None:
    msg = make_mail(sender=ALICE, to=GENERAL, subject="Hello", body="Came the usual way.")
    for n in range(5):
        msg["Received"] = received(n)["Received"]
    assert (await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[GENERAL])).data_code == 250
    posts, _ = await stored(forum)
    assert posts == 1


async def test_x_auto_response_suppress_alone_is_posted(forum: Running) -> None:
    msg = make_mail(sender=ALICE, to=GENERAL, subject="How do I reset my password?",
                    body="I forgot it. Written in Outlook.", headers={"X-Auto-Response-Suppress": "All"})
    conv = await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[GENERAL])
    assert conv.data_code == 250
    posts, (record,) = await stored(forum)
    assert posts == 1
    assert record.disposition == Disposition.ACCEPTED


async def test_subject_mentioning_out_of_office_is_a_question(forum: Running) -> None:
    msg = make_mail(sender=ALICE, to=GENERAL, subject="Out of office replies break our tickets",
                    body="Every vacation notice opens a new ticket. How do I stop that?")
    assert (await send(forum.smtp_port, msg, mail_from=ALICE, rcpt_tos=[GENERAL])).data_code == 250
    posts, _ = await stored(forum)
    assert posts == 1
