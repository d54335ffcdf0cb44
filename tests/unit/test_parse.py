"""Raw mail to ParsedMail, and ParsedMail to the content a post shows (fixtures in tests/fixtures/mail)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from qaflow_mail.mail.attachments import check_attachment, safe_filename
from qaflow_mail.mail.content import BodySource, enriched_to_text, extract_content
from qaflow_mail.mail.parse import ParsedMail, message_ids, normalize_message_id, parse_message, unflow, unfold

MAIL = Path(__file__).resolve().parents[1] / "fixtures" / "mail"


def _parse(name: str) -> ParsedMail:
    return parse_message((MAIL / name).read_bytes())


def test_gmail_top_post() -> None:
    parsed = _parse("content_gmail_top_post.eml")
    assert parsed.message_id == "CAF123gmail@mail.gmail.com"
    assert parsed.in_reply_to == ("post-41@forum.example.org",)
    assert (parsed.from_name, parsed.from_address) == ("Alice Example", "alice@example.com")
    content = extract_content(parsed)
    assert content.source is BodySource.PLAIN
    assert content.text == "Use logrotate with the copytruncate option.\n\nThanks,\nAlice"
    assert "restarting the daemon" in content.elided and "restarting the daemon" in content.full_text
    assert content.html is not None
    assert "<b>logrotate</b>" in content.html and "restarting" not in content.html


def test_outlook_top_post_in_windows_1252() -> None:
    parsed = _parse("content_outlook_top_post.eml")
    assert parsed.from_name == "Jürgen Müller"
    content = extract_content(parsed)
    assert (
        content.text == "We fixed it by raising the “max_connections” limit – it costs 5€ a month.\n\nRegards\nJürgen"
    )
    assert content.html is not None
    assert "refuse connections" not in content.html and "Bob Builder" not in content.html


def test_apple_top_post_drops_the_mobile_signature() -> None:
    content = extract_content(_parse("content_apple_top_post.eml"))
    assert content.text == "Go to 2.4 first, then 3.0. Skipping breaks the migration."
    assert content.html is None


def test_inline_reply_keeps_questions_next_to_answers() -> None:
    content = extract_content(_parse("content_inline_reply.eml"))
    assert content.text == (
        "> Which port does the gateway listen on?\n\n2525 by default; set smtp.port to change it.\n\n"
        "> And does it support TLS?\n\nYes, STARTTLS when a certificate is configured."
    )


def test_german_reply_with_wrapped_am_schrieb_line() -> None:
    parsed = _parse("content_german_reply.eml")
    assert parsed.subject == "Re: Langsame Abfrage über viele Zeilen"
    assert (
        extract_content(parsed).text == "Das liegt am fehlenden Index. Füge ihn hinzu, dann läuft die Abfrage schnell."
    )


def test_iso_2022_jp_body_subject_and_name() -> None:
    parsed = _parse("content_iso2022jp.eml")
    assert parsed.subject == "ログの場所"
    assert parsed.from_name == "佐藤"
    assert parsed.text == "日本語の質問です。ログはどこにありますか？\n"
    assert parsed.undecodable_parts == 0


def test_koi8_r_body_and_headers() -> None:
    parsed = _parse("content_koi8r.eml")
    assert (parsed.subject, parsed.from_name) == ("Почта", "Иван")
    assert extract_content(parsed).text == "Привет! Как настроить почту?"


def test_rfc2047_subject_split_inside_a_character() -> None:
    parsed = _parse("content_rfc2047_subject.eml")
    assert parsed.subject == "Ünïcödé ✓ 日本"
    assert parsed.from_name == "Zoë Tester"
    assert parsed.header("Subject") == "Ünïcödé ✓ 日本"


def test_html_only_mail_with_script_and_event_handlers() -> None:
    content = extract_content(_parse("content_html_only_script.eml"))
    assert content.source is BodySource.HTML
    assert content.text.startswith("Hello forum, see this and")
    assert "Old quoted text" not in content.text
    assert content.html is not None
    for forbidden in ("script", "steal", "onerror", "onclick", "javascript:", "tracker", "iframe", "alert"):
        assert forbidden not in content.html
    assert 'rel="nofollow noopener"' in content.html


def test_attachments_traversal_name_lying_type_and_inline_image() -> None:
    parsed = _parse("content_path_traversal_attachment.eml")
    by_type = {(a.content_type, a.inline): a for a in parsed.attachments}
    inline = by_type[("image/png", True)]
    assert inline.content_id == "shot@example.com" and inline.content.startswith(b"\x89PNG")
    passwd = by_type[("text/plain", False)]
    assert passwd.filename == "../../../etc/passwd" and safe_filename(passwd.filename) == "passwd"
    disguised = by_type[("image/png", False)]
    assert check_attachment(disguised, allowed_types={"image/png"}) is not None
    content = extract_content(parsed)
    assert content.html is not None and 'src="cid:shot@example.com"' in content.html


def test_only_signature_reply_is_empty() -> None:
    content = extract_content(_parse("content_only_signature.eml"))
    assert content.is_empty and content.only_signature and content.text == ""


def test_leading_blank_lines_before_headers_are_tolerated() -> None:
    parsed = parse_message(b"\r\n\nFrom: a@example.org\nSubject: Hi\nMessage-ID: <x@y>\n\nBody\n")
    assert parsed.subject == "Hi" and parsed.text == "Body\n" and parsed.message_id == "x@y"


def test_multipart_without_its_boundary_keeps_the_text() -> None:
    raw = b"From: a@example.org\nContent-Type: multipart/alternative; boundary=nothere\n\nJust text.\n"
    assert extract_content(parse_message(raw)).text == "Just text."


def test_raw_8bit_headers_use_the_body_charset() -> None:
    raw = "Subject: Grüße\nFrom: Jörg <j@example.org>\nContent-Type: text/plain; charset=iso-8859-1\n\nx\n"
    parsed = parse_message(raw.encode("iso-8859-1"))
    assert parsed.subject == "Grüße" and parsed.from_name == "Jörg"


def test_forwarded_message_as_the_whole_mail() -> None:
    raw = (
        b"From: a@example.org\nContent-Type: message/rfc822\n\n"
        b"From: b@example.org\nSubject: inner\nContent-Type: text/plain\n\nInner body.\n"
    )
    assert parse_message(raw).text == "Inner body.\n"


def test_attached_message_is_an_attachment_not_the_body() -> None:
    raw = (
        b"From: a@example.org\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
        b"See attached.\n--b\nContent-Type: message/rfc822\n\nFrom: c@example.org\nSubject: old\n\nOld body.\n--b--\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "See attached."
    assert [a.content_type for a in parsed.attachments] == ["message/rfc822"]
    assert b"Old body." in parsed.attachments[0].content


def test_text_enriched_body() -> None:
    raw = b"From: a@example.org\nContent-Type: text/enriched\n\n<bold>Hi</bold> there,\nsame line\n\n<<not a tag>\n"
    parsed = parse_message(raw)
    assert parsed.enriched is not None
    assert extract_content(parsed).text == "Hi there, same line\n<not a tag>"
    assert enriched_to_text("<param>x</param>a\n\n\nb") == "a\n\nb"


def test_format_flowed_is_unwrapped() -> None:
    assert unflow("This is a \nflowed line.\n> quoted \n> more\n-- \nsig") == (
        "This is a flowed line.\n> quoted more\n-- \nsig"
    )
    raw = b"Content-Type: text/plain; format=flowed; delsp=yes\n\nlong wo \nrd here\n"
    assert parse_message(raw).text == "long word here\n"


def test_message_id_helpers_keep_their_behaviour() -> None:
    assert normalize_message_id("  <abc@example.org> trailing") == "abc@example.org"
    assert normalize_message_id("bare@example.org") == "bare@example.org"
    assert normalize_message_id("no id here") is None
    assert message_ids("<a@x> <b@x>\n <a@x>") == ("a@x", "b@x")
    assert message_ids("Other person's message of Saturday <id@x>") == ("id@x",)
    assert unfold("a\r\n  b\n\tc ") == "a b c"


def test_missing_message_id_is_synthesized() -> None:
    parsed = parse_message(b"From: a@example.org\n\nbody\n")
    assert parsed.message_id_synthesized and parsed.message_id.endswith("@sha256.invalid")


@pytest.mark.parametrize("seed", range(5))
def test_garbage_never_raises(seed: int) -> None:
    rng = random.Random(seed)
    base = (MAIL / "content_outlook_top_post.eml").read_bytes()
    for _ in range(40):
        data = bytearray(base)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = bytes(data[: rng.randint(0, len(data))])
        extract_content(parse_message(cut))
    extract_content(parse_message(bytes(rng.randrange(256) for _ in range(2000))))


def test_message_id_with_two_at_signs_is_kept_whole() -> None:
    raw = (
        b"From: a@example.org\r\nMessage-ID: <019801ca633f$aa$@yang@example.com>\r\n"
        b"In-Reply-To: <01a$b$@x@example.com>\r\nReferences: <r1@example.com> <01a$b$@x@example.com>\r\n\r\nHi\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.message_id == "019801ca633f$aa$@yang@example.com"
    assert parsed.in_reply_to == ("01a$b$@x@example.com",)
    assert parsed.references == ("r1@example.com", "01a$b$@x@example.com")
