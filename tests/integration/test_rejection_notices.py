"""Rejection notices: mail that arrives without an SMTP conversation (IMAP) and is refused gets one short email
saying why and what to do, quoting its first lines, unless the sender is automatic, unauthenticated, a stranger
whose From our MTA did not authenticate (no backscatter to forged addresses), or has had enough notices this
hour. Over SMTP the sender's own MTA reports our 5xx, so no notice is sent."""

from __future__ import annotations

import dataclasses
import email
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db.models import Outbox, OutboxKind
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.outbound.render import Renderer
from qaflow_mail.pipeline.ingest import ingest
from qaflow_mail.replies import SmtpReply
from qaflow_mail.server.app import Running
from qaflow_mail.services.notices import queue_rejection_notice, reason_and_advice, withhold_reason
from tests.conftest import members_only_general
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, STRANGER = "alice@example.org", "stranger@example.com"
AUTHSERV = "mx.forum.test"
# What our MTA writes for the stranger's own, signed mail.
AUTHENTICATED = {"Authentication-Results": f"{AUTHSERV}; dkim=pass header.d=example.com header.s=sel"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        limits=dataclasses.replace(settings.limits, notice_rate_per_hour=2),
        announce=dataclasses.replace(settings.announce, trusted_authserv_id=AUTHSERV),
    )


@pytest.fixture
async def forum(gateway: Running) -> Running:
    return await members_only_general(gateway, member=ALICE, display_name="Alice")


def question(n: int = 1, *, sender: str = STRANGER, headers: dict[str, str] | None = None) -> bytes:
    body = "\n".join(f"Line {i} of my question." for i in range(1, 16))
    msg = make_mail(sender=f"Sam Stranger <{sender}>", to=GENERAL, subject=f"Question {n}", body=body,
                    message_id=f"<question-{n}@client.example>", headers=headers)
    return msg.as_bytes()


async def notices(run: Running) -> list[Outbox]:
    async with run.deps.sessions() as session:
        return list((await session.scalars(
            select(Outbox).where(Outbox.kind == OutboxKind.NOTICE).order_by(Outbox.id))).all())


def as_message(row: Outbox) -> EmailMessage:
    message = email.message_from_bytes(row.raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def imap(run: Running, raw: bytes, envelope_from: str = STRANGER) -> None:
    result = await ingest(raw, envelope_from=envelope_from, recipients=[GENERAL], source="imap", deps=run.deps)
    assert not result.reply.is_success


async def test_refused_imap_mail_gets_one_notice(forum: Running) -> None:
    raw = question(headers=AUTHENTICATED)
    await imap(forum, raw)
    await imap(forum, raw)  # polled again: still one notice
    (row,) = await notices(forum)
    assert row.recipient == STRANGER
    assert row.dedupe_key == f"notice:{parse_message(raw).sha256}:{STRANGER}"
    assert row.user_id is None
    assert row.envelope_from == ""  # a stranger's notice never bounces back to us
    message = as_message(row)
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"] == "<question-1@client.example>"
    assert message["To"] == STRANGER
    assert "Question 1" in str(message["Subject"])
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    # The refusal names this category's own way in: its -join address and its page.
    assert f"Only members may post to {GENERAL}" in text
    assert f"To join, send an empty email to general-join@{DOMAIN}" in text
    assert f"http://{DOMAIN}/c/general" in text and "register" not in text.lower()
    assert "> Line 1 of my question." in text
    assert "> Line 10 of my question." in text
    assert "Line 11" not in text


async def test_no_notice_over_smtp_or_for_an_import(forum: Running) -> None:
    conv = await send(forum.smtp_port, question(1), mail_from=STRANGER, rcpt_tos=[GENERAL])
    assert conv.data_code == 550
    await ingest(question(2), envelope_from=STRANGER, recipients=[GENERAL], source="import", deps=forum.deps)
    assert await notices(forum) == []


async def test_forged_or_failed_senders_get_no_notice(forum: Running) -> None:
    await imap(forum, question(1), envelope_from="list-bounces@lists.example.net")  # From is not the envelope
    failed = f"{AUTHSERV}; spf=fail smtp.mailfrom={STRANGER}; dkim=none; dmarc=fail header.from=example.com"
    await imap(forum, question(2, headers={"Authentication-Results": failed}))
    assert await notices(forum) == []
    # Relayed, but our MTA verified the author's domain: the notice may go.
    passed = f"{AUTHSERV}; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"
    await imap(forum, question(3, headers={"Authentication-Results": passed}),
               envelope_from="list-bounces@lists.example.net")
    assert [row.recipient for row in await notices(forum)] == [STRANGER]


async def test_notices_are_rate_limited_per_address(forum: Running) -> None:
    for n in range(4):
        await imap(forum, question(n, headers=AUTHENTICATED))
    assert len(await notices(forum)) == 2


async def test_automatic_senders_never_get_a_notice(forum: Running) -> None:
    settings = forum.deps.settings
    vacation = parse_message(question(headers={"Auto-Submitted": "auto-replied"}))
    assert withhold_reason(vacation, b"", envelope_from=STRANGER, settings=settings) is not None
    ordinary = question(headers=AUTHENTICATED)
    assert withhold_reason(parse_message(ordinary), ordinary, envelope_from=STRANGER, settings=settings) is None
    assert withhold_reason(parse_message(ordinary), ordinary, envelope_from="", settings=settings) is not None
    ours = make_mail(sender=f"notifications@{DOMAIN}", to=GENERAL).as_bytes()
    assert withhold_reason(parse_message(ours), ours, envelope_from=f"notifications@{DOMAIN}",
                           settings=settings) == "our own address"
    async with forum.deps.sessions() as session, session.begin():
        queued = await queue_rejection_notice(
            session, settings=settings, renderer=Renderer(), parsed=vacation, raw=b"",
            reply=SmtpReply(550, "5.6.0", "Empty"), envelope_from=STRANGER, now=datetime.now(UTC))
    assert queued is False
    assert await notices(forum) == []


async def test_no_backscatter_to_an_unauthenticated_stranger(forum: Running) -> None:
    """Spam polled over IMAP with a forged From (a stranger's address, envelope to match): no notice goes to the
    forged address unless our MTA authenticated the From; a registered user still gets one."""
    settings = forum.deps.settings
    spam = make_mail(sender="victim@example.com", to=GENERAL, subject="Cheap pills at http://spam.example",
                     body="Buy at http://spam.example", message_id="<s1@spam.example>",
                     headers={"Return-Path": "<victim@example.com>"}).as_bytes()
    assert withhold_reason(parse_message(spam), spam, envelope_from="victim@example.com", settings=settings) == (
        "not a registered user, and the From is not authenticated")
    await imap(forum, spam, envelope_from="victim@example.com")
    # Quoting does not fool the parser: the spf pass is for a quoted local part, the dkim result is a fail.
    quoted = (f'{AUTHSERV}; dkim=fail header.d=evil.example; '
              'spf=pass smtp.mailfrom="x;dkim=pass()header.d=example.com()"@evil.example')
    await imap(forum, question(5, headers={"Authentication-Results": quoted}))
    # Nor does a pass for another domain, or an AR header that is not our MTA's.
    for n, value in ((6, f"{AUTHSERV}; dkim=pass header.d=evil.example"),
                     (7, "mx.evil.example; dkim=pass header.d=example.com")):
        await imap(forum, question(n, headers={"Authentication-Results": value}))
    assert await notices(forum) == []
    unconfigured = dataclasses.replace(settings, announce=dataclasses.replace(settings.announce,
                                                                              trusted_authserv_id=""))
    authenticated = question(8, headers=AUTHENTICATED)
    assert withhold_reason(parse_message(authenticated), authenticated, envelope_from=STRANGER,
                           settings=unconfigured) is not None
    assert withhold_reason(parse_message(authenticated), authenticated, envelope_from=STRANGER,
                           settings=unconfigured, registered=True) is None


async def test_known_user_notice_uses_their_verp_address(forum: Running) -> None:
    body = "On Mon, Bob wrote:\n> the whole question\n"
    raw = make_mail(sender=ALICE, to=GENERAL, subject="Re: Q", body=body, message_id="<empty@client>").as_bytes()
    await imap(forum, raw, envelope_from=ALICE)
    (row,) = await notices(forum)
    assert row.envelope_from.startswith("bounces+") and row.envelope_from.endswith(f"@{DOMAIN}")
    assert row.user_id is not None
    text = as_message(row).get_body(("plain",))
    assert text is not None and "empty once quoted text is removed" in text.get_content()


def test_reason_and_advice() -> None:
    assert reason_and_advice(SmtpReply(550, "5.7.1", "Not allowed; register first"), domain=DOMAIN) == (
        "Not allowed", "Register first.")
    reason, advice = reason_and_advice(SmtpReply(552, "5.3.4", "Attachment too large: at most 10 bytes each"),
                                       domain=DOMAIN)
    assert reason == "Attachment too large: at most 10 bytes each"
    assert "smaller attachments" in advice
    assert reason_and_advice(SmtpReply(554, "5.9.9", "Odd"), domain=DOMAIN)[1].endswith(f"postmaster@{DOMAIN}.")
