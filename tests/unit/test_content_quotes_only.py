"""A reply that holds nothing but quoted lines has nothing to post."""

from __future__ import annotations

from qaflow_mail.mail.content import extract_content
from qaflow_mail.mail.parse import parse_message


def test_reply_of_only_quoted_lines_is_empty() -> None:
    content = extract_content(parse_message(b"From: a@b.example\r\nSubject: Re: x\r\n\r\n> quoted\r\n> more\r\n"))
    assert content.is_empty


def test_reply_with_an_answer_below_quotes_is_not_empty() -> None:
    content = extract_content(
        parse_message(b"From: a@b.example\r\nSubject: Re: x\r\n\r\n> quoted\r\n\r\nMy answer.\r\n"))
    assert not content.is_empty
    assert "My answer." in content.text
