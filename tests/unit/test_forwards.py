"""A forwarded message keeps its forwarded part as a collapsed quote; a reply's history is still trimmed."""

from __future__ import annotations

import pytest

from qaflow_mail.mail.content import extract_content
from qaflow_mail.mail.forwards import is_forward_subject, split_forward
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.mail.sanitize import sanitize_html

FORWARDED_BODY = "The build fails on ARM since 2.3; the log is attached upstream."


def _mail(subject: str, body: str, *, ctype: str = "text/plain") -> bytes:
    return (
        f"From: Ann <ann@example.com>\r\nTo: general@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <fwd-test@example.com>\r\nContent-Type: {ctype}; charset=utf-8\r\n\r\n{body}"
    ).encode()


INLINE_FORWARDS = {
    "gmail": "FYI, see below.\n\n---------- Forwarded message ---------\nFrom: Bob <bob@example.org>\n"
    "Date: Mon, Jan 1, 2024 at 10:00 AM\nSubject: ARM build\nTo: <dev@example.org>\n\n\n" + FORWARDED_BODY,
    "thunderbird": "FYI, see below.\n\n-------- Forwarded Message --------\nSubject: \tARM build\n"
    "Date: \tMon, 1 Jan 2024 10:00:00 +0100\nFrom: \tBob <bob@example.org>\nTo: \tdev@example.org\n\n"
    + FORWARDED_BODY,
    "apple": "FYI, see below.\n\nBegin forwarded message:\n\nFrom: Bob <bob@example.org>\n"
    "Subject: ARM build\nDate: 1 January 2024 at 10:00:00 CET\nTo: dev@example.org\n\n" + FORWARDED_BODY,
    "outlook-original-message": "FYI, see below.\n\n-----Original Message-----\nFrom: Bob <bob@example.org>\n"
    "Sent: Monday, January 1, 2024 10:00 AM\nTo: dev@example.org\nSubject: ARM build\n\n" + FORWARDED_BODY,
    "outlook-header-block": "FYI, see below.\n\n________________________________\nFrom: Bob <bob@example.org>\n"
    "Sent: Monday, January 1, 2024 10:00 AM\nTo: dev@example.org\nSubject: ARM build\n\n" + FORWARDED_BODY,
}


@pytest.mark.parametrize("body", INLINE_FORWARDS.values(), ids=INLINE_FORWARDS.keys())
def test_inline_forward_keeps_the_forwarded_part_quoted(body: str) -> None:
    content = extract_content(parse_message(_mail("Fwd: ARM build", body)))
    assert content.forwarded
    assert content.text.startswith("FYI, see below.\n\nForwarded message\n> ")
    assert f"> {FORWARDED_BODY}" in content.text
    assert "bob@example.org" not in content.text  # a post is a public page
    assert "> From: Bob" in content.text
    assert content.html is None and not content.is_empty


@pytest.mark.parametrize("prefix", ["Fwd:", "Fw:", "FW:", "WG:", "TR:", "RV:", "ENC:", "Doorst:", "[list] Fwd:"])
def test_forward_subject_prefixes(prefix: str) -> None:
    assert is_forward_subject(f"{prefix} ARM build")


def test_gmail_forward_marker_is_a_forward_without_the_subject_saying_so() -> None:
    forward = split_forward(INLINE_FORWARDS["gmail"], "ARM build")
    assert forward is not None and forward.own == "FYI, see below."


def test_outlook_original_message_in_a_reply_is_trimmed() -> None:
    content = extract_content(parse_message(_mail("RE: ARM build", INLINE_FORWARDS["outlook-original-message"])))
    assert not content.forwarded
    assert content.text == "FYI, see below."


def test_original_message_without_a_forward_subject_is_a_reply() -> None:
    assert split_forward(INLINE_FORWARDS["outlook-original-message"], "ARM build") is None


def test_a_forward_quoted_inside_a_reply_stays_trimmed() -> None:
    body = "Thanks!\n\nOn Mon, Jan 1, 2024 at 10:00 AM Bob <bob@example.org> wrote:\n" + "\n".join(
        "> " + line for line in INLINE_FORWARDS["gmail"].split("\n")
    )
    content = extract_content(parse_message(_mail("Re: Fwd: ARM build", body)))
    assert not content.forwarded and content.text == "Thanks!"


def test_forward_without_words_of_its_own_is_not_empty() -> None:
    body = INLINE_FORWARDS["gmail"].replace("FYI, see below.\n\n", "")
    content = extract_content(parse_message(_mail("Fwd: ARM build", body)))
    assert not content.is_empty
    assert content.text.startswith("Forwarded message\n> ")


def test_gmail_html_forward_is_a_collapsed_block() -> None:
    html = (
        '<div dir="ltr">FYI, see below.<br><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
        "---------- Forwarded message ---------<br>From: <strong>Bob</strong> <span>&lt;"
        '<a href="mailto:bob@example.org">bob@example.org</a>&gt;</span><br>Date: Mon, Jan 1, 2024 at 10:00 AM<br>'
        f"Subject: ARM build<br></div><br><br><div dir=\"ltr\">{FORWARDED_BODY}</div></div></div>"
    )
    content = extract_content(parse_message(_mail("Fwd: ARM build", html, ctype="text/html")))
    assert content.forwarded
    assert content.html is not None
    own, block = content.html.split("<details><summary>Forwarded message</summary><blockquote>")
    assert own == "FYI, see below."
    assert block.startswith("From: <strong>Bob</strong>")
    assert FORWARDED_BODY in content.html and "bob@example.org" not in content.html
    assert f"> {FORWARDED_BODY}" in content.text


def test_forward_as_attachment_is_shown_as_a_collapsed_block() -> None:
    inner = (
        "From: Bob <bob@example.org>\r\nTo: dev@example.org\r\nSubject: ARM build\r\n"
        "Date: Mon, 1 Jan 2024 10:00:00 +0100\r\nContent-Type: text/plain\r\n\r\n" + FORWARDED_BODY + "\r\n"
    )
    raw = (
        "From: Ann <ann@example.com>\r\nTo: general@example.com\r\nSubject: Fwd: ARM build\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: text/plain\r\n\r\nSee the attached mail.\r\n--b\r\nContent-Type: message/rfc822\r\n"
        'Content-Disposition: attachment; filename="arm.eml"\r\n\r\n' + inner + "--b--\r\n"
    ).encode()
    content = extract_content(parse_message(raw))
    assert content.forwarded
    assert content.text.startswith("See the attached mail.\n\nForwarded message\n> From: Bob\n")
    assert f"> {FORWARDED_BODY}" in content.text


def test_details_and_summary_survive_sanitising() -> None:
    html = sanitize_html('<details open onclick="x()"><summary>Forwarded message</summary><p>hi</p></details>')
    assert html == "<details><summary>Forwarded message</summary><p>hi</p></details>"
