"""Quoted history in HTML mail, as each client writes it, is left out of a post (real-shaped snippets)."""

from __future__ import annotations

import pytest

from qaflow_mail.mail.content import extract_content, html_reply_text
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.mail.sanitize import split_quoted_html, strip_quoted_html

REPLY = "The fix works here too."
QUOTED = "Has anyone tried the new build on ARM?"

CLIENTS = {
    "outlook-divRplyFwdMsg": (
        f'<div dir="ltr"><p>{REPLY}</p></div><hr style="display:inline-block;width:98%" tabindex="-1">'
        '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif"><b>From:</b> Bob '
        "&lt;bob@example.org&gt;<br><b>Sent:</b> Monday, January 1, 2024 10:00 AM<br><b>To:</b> forum<br>"
        f"<b>Subject:</b> ARM</font><div>&nbsp;</div></div><div><p>{QUOTED}</p></div>"
    ),
    "outlook-OLK_SRC_BODY_SECTION": (
        f"<div><p>{REPLY}</p></div><span id=\"OLK_SRC_BODY_SECTION\"><div><b>From: </b>Bob<br>"
        f"<b>Date: </b>Monday, 1 January 2024</div><div><p>{QUOTED}</p></div></span>"
    ),
    "outlook-appendonsend": (
        f'<div>{REPLY}</div><div id="appendonsend"></div><hr><div id="divRplyFwdMsg"><b>From:</b> Bob</div>'
        f"<div>{QUOTED}</div>"
    ),
    "spark-messageReplySection": (
        f'<div>{REPLY}</div><div name="messageReplySection">On 1 Jan 2024, 10:00 +0100, Bob &lt;bob@example.org&gt;,'
        f' wrote:<br><blockquote type="cite">{QUOTED}</blockquote></div>'
    ),
    "yahoo_quoted": (
        f'<div class="ydp1"><div>{REPLY}</div></div><div id="ydp2yahoo_quoted_1" class="ydp2yahoo_quoted '
        'yahoo_quoted"><div style="font-family:Helvetica">On Monday, January 1, 2024, 10:00:00 AM GMT+1, Bob '
        f"&lt;bob@example.org&gt; wrote:</div><div><div>{QUOTED}</div></div></div>"
    ),
    "apple-blockquote-cite": (
        f'<html><body dir="auto"><div>{REPLY}</div><div><br><blockquote type="cite">On 1 Jan 2024, at 10:00, '
        f'Bob &lt;bob@example.org&gt; wrote:<br><br></blockquote></div><blockquote type="cite"><div>{QUOTED}'
        "</div></blockquote></body></html>"
    ),
    "thunderbird-moz-cite-prefix": (
        f'<p>{REPLY}</p><div class="moz-cite-prefix">On 01/01/2024 10:00, Bob wrote:<br></div>'
        f'<blockquote type="cite" cite="mid:x@example.org"><p>{QUOTED}</p></blockquote>'
    ),
    "gmail_quote": (
        f'<div dir="ltr">{REPLY}</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, '
        'Jan 1, 2024 at 10:00 AM Bob &lt;<a href="mailto:bob@example.org">bob@example.org</a>&gt; wrote:<br></div>'
        f'<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">{QUOTED}</blockquote></div>'
    ),
    "gmail_quote_container-gmail_attr": (
        f'<div dir="ltr">{REPLY}</div><br><div class="gmail_quote gmail_quote_container"><div dir="ltr" '
        'class="gmail_attr">On Mon, Jan 1, 2024 at 10:00 AM Bob wrote:<br></div><blockquote class="gmail_quote">'
        f"{QUOTED}</blockquote></div>"
    ),
    "protonmail_quote": (
        f'<div style="font-family: Arial">{REPLY}</div><div class="protonmail_quote">On Monday, January 1st, '
        f'2024 at 10:00, Bob &lt;bob@example.org&gt; wrote:<br><blockquote class="protonmail_quote" '
        f'type="cite">{QUOTED}</blockquote><br></div>'
    ),
    "zimbra-data-marker": (
        f'<html><body><div style="font-family: arial">{REPLY}</div><hr id="zwchr" data-marker="__DIVIDER__">'
        '<div data-marker="__HEADERS__"><b>From: </b>"Bob" &lt;bob@example.org&gt;<br><b>Sent: </b>Monday, '
        f'1 January, 2024 10:00:00<br></div><br><div data-marker="__QUOTED_TEXT__">{QUOTED}</div></body></html>'
    ),
    "front-blockquote": (
        f'<div>{REPLY}</div><blockquote type="cite" class="front-blockquote">On January 1, 2024 at 10:00 AM '
        f'GMT+1 <a href="mailto:bob@example.org">bob@example.org</a> wrote:<br><br><div class="front-email-body">'
        f"{QUOTED}</div></blockquote>"
    ),
    # Superhuman writes Gmail-compatible markup (gmail_quote / gmail_attr) so that Gmail folds its quotes.
    "superhuman": (
        f'<div><div>{REPLY}</div><div><br></div><div class="gmail_quote"><div class="gmail_attr">On Mon, Jan 01, '
        f'2024 at 10:00 AM, Bob &lt;bob@example.org&gt; wrote:<br></div><blockquote class="gmail_quote">{QUOTED}'
        "</blockquote></div></div>"
    ),
}


@pytest.mark.parametrize("html", CLIENTS.values(), ids=CLIENTS.keys())
def test_quote_container_is_left_out(html: str) -> None:
    assert QUOTED not in strip_quoted_html(html)
    assert html_reply_text(html) == REPLY


@pytest.mark.parametrize("html", CLIENTS.values(), ids=CLIENTS.keys())
def test_the_quoted_part_is_kept_aside_not_lost(html: str) -> None:
    own, quoted = split_quoted_html(html)
    assert REPLY in own
    assert QUOTED in quoted and REPLY not in quoted


@pytest.mark.parametrize("html", CLIENTS.values(), ids=CLIENTS.keys())
def test_a_post_from_an_html_only_reply_shows_only_the_reply(html: str) -> None:
    raw = (
        "From: Ann <ann@example.com>\r\nTo: general@example.com\r\nSubject: Re: ARM\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n" + html
    ).encode()
    content = extract_content(parse_message(raw))
    assert content.text == REPLY
    assert content.html is not None and REPLY in content.html and QUOTED not in content.html


def test_a_signature_is_dropped_not_kept_as_quote() -> None:
    own, quoted = split_quoted_html(f'<div>{REPLY}</div><div class="gmail_signature">Ann, ACME</div>')
    assert "ACME" not in own and "ACME" not in quoted
