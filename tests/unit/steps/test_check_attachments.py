"""check_attachments: within [limits] max_attachments and max_attachment_size, of a type we keep; otherwise the
refusal says which limit (the reply keeps its code and status, worded for the case)."""

from __future__ import annotations

from email.message import EmailMessage

from qaflow_mail.deps import Deps
from qaflow_mail.pipeline import Context, Outcome
from qaflow_mail.pipeline.steps.check_attachments import check_attachments
from qaflow_mail.replies import ATTACHMENT_REFUSED, ATTACHMENT_TOO_BIG, TOO_MANY_ATTACHMENTS, SmtpReply
from tests.unit.steps.conftest import ALICE, DOMAIN, MakeContext, assert_refused, passed, tuned


def with_attachments(*files: tuple[str, str, bytes]) -> bytes:
    """A text message with (filename, content type, content) attachments."""
    msg = EmailMessage()
    msg["From"] = f"Alice <{ALICE}>"
    msg["To"] = f"general@{DOMAIN}"
    msg["Subject"] = "Logs attached"
    msg["Message-ID"] = "<attach-1@example.org>"
    msg.set_content("The logs are attached.\n")
    for filename, content_type, content in files:
        maintype, subtype = content_type.split("/")
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def assert_worded(result: Context | Outcome, reply: SmtpReply, *phrases: str) -> None:
    """Refused with `reply` worded for the case: the same code, status and notice, a text naming `phrases`."""
    assert isinstance(result, Outcome), result
    outcome = assert_refused(result, reply.with_text(result.reply.text))
    assert (outcome.reply.code, outcome.reply.enhanced, outcome.reply.notice) == (reply.code, reply.enhanced,
                                                                                 reply.notice)
    assert outcome.reply.text.startswith(reply.text), outcome.reply.text
    for phrase in phrases:
        assert phrase in outcome.reply.text
    assert outcome.reason == outcome.reply.text


async def test_a_message_without_attachments_passes_unchanged(make_context: MakeContext) -> None:
    ctx = make_context()

    assert passed(await check_attachments(ctx)) is ctx


async def test_attachments_within_the_limits_pass(make_context: MakeContext) -> None:
    ctx = make_context(with_attachments(("app.log", "text/plain", b"error: disk full\n"),
                                        ("notes.txt", "text/plain", b"see above\n")))

    assert len(ctx.parsed.attachments) == 2
    assert passed(await check_attachments(ctx)) is ctx


async def test_too_many_attachments_are_refused(make_context: MakeContext, deps: Deps) -> None:
    raw = with_attachments(("a.txt", "text/plain", b"a\n"), ("b.txt", "text/plain", b"b\n"))

    result = await check_attachments(make_context(raw, deps=tuned(deps, "limits", max_attachments=1)))

    assert_worded(result, TOO_MANY_ATTACHMENTS, "at most 1 per message")


async def test_a_too_large_attachment_is_refused(make_context: MakeContext, deps: Deps) -> None:
    raw = with_attachments(("big.txt", "text/plain", b"x" * 2048))

    result = await check_attachments(make_context(raw, deps=tuned(deps, "limits", max_attachment_size=1024)))

    assert_worded(result, ATTACHMENT_TOO_BIG, "at most 1024 bytes")


async def test_an_executable_is_refused(make_context: MakeContext) -> None:
    raw = with_attachments(("setup.exe", "application/octet-stream", b"MZ\x90\x00" + b"\x00" * 60))

    assert_worded(await check_attachments(make_context(raw)), ATTACHMENT_REFUSED, "setup.exe")


async def test_an_extension_hidden_by_invisible_characters_is_refused(make_context: MakeContext) -> None:
    raw = with_attachments(("invoice.ex\u200be", "application/octet-stream", b"just bytes"))

    assert_worded(await check_attachments(make_context(raw)), ATTACHMENT_REFUSED, "executable")
