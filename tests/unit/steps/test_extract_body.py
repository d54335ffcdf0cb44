"""extract_body: the text a post shows (quotes and signature trimmed, HTML sanitised); a message with nothing of
its own is refused."""

from __future__ import annotations

from email.message import EmailMessage

from qaflow_mail.db.models import Disposition
from qaflow_mail.pipeline.steps.extract_body import extract_body
from qaflow_mail.replies import EMPTY_REPLY, NO_TEXT, ONLY_SIGNATURE
from tests.unit.steps.conftest import MakeContext, assert_refused, passed

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
QUOTE = "On Mon, 2 Jun 2025, Bob wrote:\n> Has anyone rotated these logs?\n> They fill the disk.\n"


async def test_the_text_is_kept_and_the_quote_trimmed(make_context: MakeContext) -> None:
    ctx = make_context(body=f"Use logrotate with copytruncate.\n\n{QUOTE}")

    out = passed(await extract_body(ctx))

    assert out.content is not None
    assert "Use logrotate with copytruncate." in out.content.text
    assert "They fill the disk" not in out.content.text
    assert out.parsed is ctx.parsed and out.author is ctx.author  # nothing else changes


async def test_html_only_mail_is_sanitised(make_context: MakeContext) -> None:
    raw = (
        b"From: Alice <alice@example.org>\r\nTo: general@forum.test\r\nSubject: Hi\r\n"
        b"Message-ID: <html-1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<p>Use <b>logrotate</b>.</p><script>alert(1)</script>\r\n"
    )

    out = passed(await extract_body(make_context(raw)))

    assert out.content is not None
    assert "logrotate" in out.content.text
    assert "alert(1)" not in out.content.text
    assert out.content.html is None or "<script" not in out.content.html


async def test_a_reply_that_is_only_a_quote_is_refused(make_context: MakeContext) -> None:
    result = assert_refused(await extract_body(make_context(body=QUOTE)), EMPTY_REPLY)

    assert result.disposition == Disposition.REJECTED
    assert result.notify_sender  # an IMAP sender is told by mail


async def test_an_empty_body_is_refused_for_having_no_text(make_context: MakeContext) -> None:
    """The refusal names the real reason: nothing was written (there is no quote to blame)."""
    assert_refused(await extract_body(make_context(body="\n\n")), NO_TEXT)


async def test_a_screenshot_without_words_is_a_post(make_context: MakeContext) -> None:
    """Regression (defect 3): an image-only mail (an iPhone photo under "Sent from my iPhone") is posted."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Alice <alice@example.org>", "general@forum.test", "Screenshot"
    msg["Message-ID"] = "<shot-1@example.org>"
    msg.set_content("\n\nSent from my iPhone\n")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="IMG_0042.PNG", disposition="inline")

    out = passed(await extract_body(make_context(msg.as_bytes())))

    assert out.content is not None and out.content.text == ""


async def test_a_pdf_with_an_empty_body_is_a_post(make_context: MakeContext) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Alice <alice@example.org>", "general@forum.test", "Invoice"
    msg["Message-ID"] = "<pdf-1@example.org>"
    msg.add_attachment(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj\n", maintype="application", subtype="pdf",
                       filename="invoice.pdf")

    assert passed(await extract_body(make_context(msg.as_bytes()))).content is not None


async def test_a_reply_that_is_only_a_signature_is_refused(make_context: MakeContext) -> None:
    result = await extract_body(make_context(body=f"-- \nAlice Example\nOps team\n\n{QUOTE}"))

    assert_refused(result, ONLY_SIGNATURE)
