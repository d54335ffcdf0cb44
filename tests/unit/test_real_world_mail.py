"""Pure parts of the real-world mail fixes: the list-rewritten From (defect 7), reply commands (defect 9) and
values a database column cannot hold (defect 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qaflow_mail.mail.commands import ReplyCommand, reply_command
from qaflow_mail.mail.parse import parse_message

CORPORA = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora" / "discourse-emails"


def _discourse(name: str) -> bytes:
    path = CORPORA / name
    if not path.is_file():
        pytest.skip(f"the Discourse sample corpus is not next to the repository ({name} missing)")
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "author"),
    [
        ("reply_to_different_to_from.eml", "arthurmorgan@reddeadtest.com"),
        ("reply_to_different_to_from_quoted_display_name.eml", "johnmarston@reddeadtest.com"),
        ("reply_to_different_to_from_no_x_original.eml", "arthurmorgan@reddeadtest.com"),
        # X-Original-From and Reply-To name different people: nobody is guessed, the list stays the sender
        ("reply_to_different_to_from_x_original_different.eml", "westernsupport@test.mailinglist.com"),
    ],
)
def test_a_dmarc_rewritten_from_gives_back_the_real_author(name: str, author: str) -> None:
    parsed = parse_message(_discourse(name))
    assert parsed.from_address == author
    assert parsed.list_from in {"", "westernsupport@test.mailinglist.com"}


def test_mailman_munged_from_with_the_author_in_cc() -> None:
    raw = (
        b'From: "Some One via Users" <users@lists.example.com>\r\nCc: Some One <one@example.org>\r\n'
        b"List-Post: <mailto:users@lists.example.com>\r\nSubject: q\r\nMessage-ID: <m1@example.org>\r\n\r\nhi\r\n"
    )
    parsed = parse_message(raw)
    assert (parsed.from_address, parsed.from_name, parsed.list_from) == (
        "one@example.org", "Some One", "users@lists.example.com")


def test_a_person_named_via_is_not_rewritten_without_a_witness() -> None:
    raw = b"From: Ana via Rome <ana@example.org>\r\nReply-To: Bob <bob@example.net>\r\nSubject: q\r\n\r\nhi\r\n"
    assert parse_message(raw).from_address == "ana@example.org"


def test_nul_and_overlong_ids_never_reach_a_column() -> None:
    """Regression (defect 1): the Discourse null_byte_in_subject sample, and a Message-ID longer than its column."""
    parsed = parse_message(_discourse("null_byte_in_subject.eml"))
    assert "\x00" not in parsed.subject and parsed.subject == "testing"
    long_id = "x" * 400 + "@example.org"
    parsed = parse_message(f"From: a@example.org\r\nMessage-ID: <{long_id}>\r\n\r\nhi\r\n".encode())
    assert len(parsed.message_id) <= 255 and not parsed.message_id_synthesized
    assert parse_message(f"From: a@example.org\r\nMessage-ID: <{long_id}>\r\n\r\nyo\r\n".encode()).message_id == (
        parsed.message_id)


@pytest.mark.parametrize("text", ["unsubscribe", "Unsubscribe!", "Please remove me.", "STOP", "bitte abmelden",
                                  "désabonner svp", "darme de baja", "uitschrijven"])
def test_a_whole_reply_that_is_a_command(text: str) -> None:
    assert reply_command(text) is ReplyCommand.UNSUBSCRIBE


@pytest.mark.parametrize("text", ["How do I stop the daemon?", "stop the daemon first", "unsubscribe\n\nand also…",
                                  "", "Thanks, that fixed it"])
def test_a_reply_that_mentions_a_command_is_a_post(text: str) -> None:
    assert reply_command(text) is None
