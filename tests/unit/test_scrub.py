"""No token of ours and no line of our footers survives into a post, whatever shape the reply takes.

The notification quoted in each reply is rendered by the real template with real signed tokens, so a change of
wording in templates/notify makes these fail rather than leak."""

from __future__ import annotations

import re
from datetime import date
from urllib.parse import quote

import pytest

from qaflow_mail.mail.scrub import REMOVED, scrub
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.outbound.render import MailTemplate, Renderer

SECRET = "scrub-secret"
SECRETS = [SECRET]
ISSUED = date(2026, 3, 1)
REPLY = sign(TokenKind.REPLY, (41, 7), secret=SECRET, issued=ISSUED)
UNSUB = sign(TokenKind.UNSUBSCRIBE, (7, 3), secret=SECRET, issued=ISSUED)
FOOTER_WORDS = ("Reply to this email", "To stop getting emails", "send an empty email", "View the topic",
                "You get this email")


def notification(why: str = "follow") -> tuple[str, str]:
    rendered = Renderer().render(MailTemplate.NOTIFY_POST, {
        "why": why,
        "site": {"name": "QAFlow", "base_url": "https://forum.test"},
        "category": {"name": "General", "slug": "general"},
        "topic": {"id": 9, "subject": "Editors", "url": "https://forum.test/t/9"},
        "post": {"id": 41, "author_name": "Alice", "text": "Vim or Emacs?\nOr nano?", "html": None,
                 "is_first": True},
        "unsubscribe_url": f"https://forum.test/unsubscribe/{UNSUB}",
        "unsubscribe_mailto": f"unsubscribe+{UNSUB}@forum.test",
        "reply_address": f"reply+{REPLY}@forum.test",
    })
    assert rendered.html is not None
    return rendered.text, rendered.html


def quoted(text: str, prefix: str = "> ") -> str:
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.rstrip("\n").split("\n"))


def assert_clean(text: str) -> None:
    assert REPLY not in text and UNSUB not in text, text
    for words in FOOTER_WORDS:
        assert words not in text, text


def shapes() -> dict[str, str]:
    text, _ = notification()
    lines = text.rstrip("\n").split("\n")
    q = quoted(text)
    via = "Alice via QAFlow <notifications@forum.test>"
    return {
        # s-nail / mutt: "On ... wrote:" then the quote, answer at the bottom, signature after
        "mutt-bottom": f"On Sun, Mar 01, 2026 Alice wrote:\n{q}\n\nEmacs.\n\n-- \nBob",
        "s-nail-interleaved": "\n".join(["> " + lines[0], "Emacs.", "> " + lines[1], "Nano too.",
                                         quoted("\n".join(lines[2:])), "", "Cheers, Bob"]),
        "thunderbird-top": f"Emacs.\n\nOn 01/03/2026 12:00, QAFlow wrote:\n{q}\nBob",
        "apple-mail": f"Emacs.\n\n> On 1 Mar 2026, at 12:00, {via} wrote:\n>\n{q}\n\nBob",
        "gmail": f"Emacs.\n\nOn Sun, 1 Mar 2026 at 12:00, {via} wrote:\n\n{q}\n\nBob",
        "outlook-unquoted": (f"Emacs.\n\nFrom: {via}\nSent: Sunday, March 1, 2026\n"
                             f"To: bob@example.net\nSubject: [General] Editors\n\n{text}\nBob"),
        "forwarded": f"FYI\n\n---------- Forwarded message ---------\n{text}\nBob",
        "nested-quote": f"Emacs.\n{quoted(q)}\nBob",
        "safelinks": ("Emacs. Unsubscribe me here: https://eur01.safelinks.protection.outlook.com/?url="
                      + quote(f"https://forum.test/unsubscribe/{UNSUB}", safe="") + "&data=04 thanks\nBob"),
    }


@pytest.mark.parametrize("shape", sorted(shapes()))
def test_no_token_or_footer_line_survives(shape: str) -> None:
    result = scrub(shapes()[shape], None, secrets=SECRETS)
    assert_clean(result.text)
    assert result.tokens > 0 or result.footer_lines > 0
    assert "Emacs." in result.text or "FYI" in result.text


def test_the_writers_own_words_stay_and_a_token_in_them_becomes_a_marker() -> None:
    text = f"Please write to reply+{REPLY}@forum.test about it.\nThanks"
    result = scrub(text, None, secrets=SECRETS)
    assert result.text == f"Please write to {REMOVED} about it.\nThanks"


def test_a_token_signed_with_another_key_and_ordinary_text_are_left_alone() -> None:
    foreign = sign(TokenKind.UNSUBSCRIBE, (7, 3), secret="someone-else", issued=ISSUED)
    text = f"See https://other.example/unsubscribe/{foreign} and abcdefghijklmnopqrstuvwxyz234567.\nBye"
    result = scrub(text, None, secrets=SECRETS)
    assert result.text == text and not result.changed


def test_html_replies_lose_our_links_and_footer_blocks() -> None:
    _, html = notification()
    reply = f"<p>Emacs.</p><blockquote>{html}</blockquote><p>Bob</p>"
    result = scrub("Emacs.\nBob", reply, secrets=SECRETS)
    assert result.html is not None
    assert_clean(result.html)
    assert "Emacs." in result.html and "Bob" in result.html


def test_every_footer_line_of_a_rendered_notification_is_recognised() -> None:
    for why in ("follow", "asked"):
        text, _ = notification(why)
        footer = text.split("\n-- \n", 1)[1]
        kept = scrub(quoted(footer) + "\nBob", None, secrets=SECRETS).text
        assert kept == "Bob", (why, kept)
        assert not re.search(r"unsubscribe", kept)
