"""A real mail client threads the answer under the question the asker sent.

Alice (subscribed to nothing) mails a question over SMTP; Bob answers by replying to his notification; the
notification the gateway mails Alice is taken from the SMTP sink the outbox delivers to. Her own copy of the
question, an unrelated mail and that notification go into a real Dovecot by IMAP APPEND, in that order, and s-nail
reads the folder over IMAP with ``autosort=thread``: its header list must show the answer right under the question,
one level deeper, and the unrelated mail after them. The same two messages make one Gmail-style conversation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import CategorySubscription, SubscriptionMode
from qaflow_mail.server.app import Running
from tests.dovecot import INSTALL_HINT, Dovecot
from tests.integration.test_askers import deliver, post
from tests.sink import SmtpSink
from tests.smtp_client import make_mail
from tests.unit.test_gmail_grouping import same_conversation

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, BOB = "alice@example.org", "bob@example.net"
CLIENT_TIMEOUT = 30.0
FIELD = "\x1f"  # between the fields of s-nail's header line: never in an address or a subject we use


@pytest.fixture
def s_nail() -> str:
    found = shutil.which("s-nail")
    if found is None:
        pytest.skip(f"s-nail not installed: {INSTALL_HINT}")
    return found


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    return dataclasses.replace(
        settings,
        outbound=dataclasses.replace(settings.outbound, **sink.as_relay()),
    )


@pytest.fixture
async def forum(gateway: Running) -> Running:
    """Alice follows nothing; Bob follows General post by post."""
    now = datetime.now(UTC)
    async with gateway.deps.sessions() as session, session.begin():
        general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
        bob = await queries.add_user(session, email=BOB, display_name="Bob", now=now)
        session.add(CategorySubscription(user_id=bob.id, category_id=general.id, mode=SubscriptionMode.EACH))
    await gateway.deps.categories.reload()
    return gateway


@dataclass(frozen=True, slots=True)
class HeaderLine:
    number: int
    sender: str  # s-nail cuts it to 18 characters
    indent: str  # s-nail's thread marker: "" at the top of a thread, a tree glyph for a reply
    subject: str


def thread_view(s_nail: str, server: Dovecot, home: Path) -> tuple[list[HeaderLine], str]:
    """s-nail's header list of INBOX, sorted into threads, read over IMAP; and its raw output for the report."""
    folder = f"imap://{server.user}:{server.password}@{server.host}:{server.port}/INBOX"
    environment = {"HOME": str(home), "PATH": "/usr/bin:/bin", "MAILRC": "/dev/null", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        [s_nail, "-#", "-n", "-R", "-S", "v15-compat", "-S", "imap-auth=login", "-S", "autosort=thread",
         "-S", f"headline=%m{FIELD}%f{FIELD}%i{FIELD}%s", "-f", folder],
        input="headers\n", capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=environment, check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = []
    for line in done.stdout.splitlines():
        fields = [field.strip() for field in line.split(FIELD)]
        if len(fields) == 4:
            number, sender, indent, subject = fields
            lines.append(HeaderLine(int(number.lstrip(">").split()[-1]), sender, indent, subject))
    return lines, done.stdout


async def test_s_nail_threads_the_answer_under_the_question_alice_sent(
    forum: Running, sink: SmtpSink, dovecot: Dovecot, s_nail: str, tmp_path: Path
) -> None:
    question = make_mail(sender=f"Alice <{ALICE}>", to=GENERAL, subject="How do I reset my password?",
                         body="I forgot it.", message_id="<alice-q1@example.org>")
    await post(forum, question, sender=ALICE, rcpt=GENERAL)
    to_bob = (await deliver(forum, sink, 1))[BOB].parsed()
    answer = make_mail(sender=f"Bob <{BOB}>", to=str(to_bob["Reply-To"]), subject=f"Re: {to_bob['Subject']}",
                       body="Use the link on the login page.", message_id="<bob-a1@example.net>")
    await post(forum, answer, sender=BOB, rcpt=to_bob["Reply-To"].addresses[0].addr_spec)
    to_alice = (await deliver(forum, sink, 1))[ALICE]
    assert same_conversation(question, to_alice.parsed())  # and Gmail's grouping, as modelled there

    unrelated = make_mail(sender="Zed <zed@example.com>", to=ALICE, subject="Lunch on Friday?", body="12:30?",
                          message_id="<lunch-1@example.com>")
    for raw in (question.as_bytes(), unrelated.as_bytes(), to_alice.raw):
        await asyncio.to_thread(dovecot.deliver, raw)
    view, transcript = await asyncio.to_thread(thread_view, s_nail, dovecot, tmp_path)

    assert [line.number for line in view] == [1, 3, 2], transcript
    top, reply, other = view
    assert (top.sender, top.indent, top.subject) == (ALICE, "", "How do I reset my password?"), transcript
    assert reply.sender.startswith("notifications@") and reply.indent, transcript  # one level down
    assert reply.subject.endswith("How do I reset my password?"), transcript
    assert other.indent == "" and other.subject == "Lunch on Friday?", transcript
