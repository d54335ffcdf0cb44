from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage, MIMEPart
from email.utils import parsedate_to_datetime

import pytest

from qaflow_mail.mail.compose import (
    MAX_REFERENCES,
    ListHeaders,
    clean_header_text,
    compose,
    is_our_message_id,
    list_id_value,
    loop_marker,
    make_message_id,
    to_bytes,
    transfer_encoding,
    via_display_name,
)
from qaflow_mail.mail.parse import parse_message

DOMAIN = "forum.example.org"
WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
TOKEN = "a" * 52
LONG_OUTLOOK_ID = "AM0PR07MB4417C7F3A1B2C3D4E5F60718293A4B5C6D7E8F9@AM0PR07MB4417.eurprd07.prod.outlook.com"
LIST = ListHeaders(
    list_id=list_id_value("Python", slug="python", domain=DOMAIN),
    post="python@forum.example.org",
    archive="https://forum.example.org/c/python",
    unsubscribe_mailto=f"unsubscribe+{TOKEN}@forum.example.org",
    unsubscribe_https=f"https://forum.example.org/email/unsubscribe/{TOKEN}",
)


def _compose(
    *,
    subject: str = "How do I parse mail?",
    from_name: str = "Alice via QAFlow",
    text: str = "Hello world\n",
    html: str | None = "<p>Hello world</p>",
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    list_headers: ListHeaders | None = LIST,
    extra_headers: Mapping[str, str] | None = None,
    to: str = "bob@example.com",
) -> EmailMessage:
    return compose(
        from_name=from_name,
        from_address=f"notifications@{DOMAIN}",
        to=to,
        subject=subject,
        text=text,
        html=html,
        message_id=f"post-42.abc@{DOMAIN}",
        in_reply_to=in_reply_to,
        references=references,
        reply_to=f"reply+{TOKEN}@{DOMAIN}",
        list_headers=list_headers,
        extra_headers=extra_headers or {},
        date=WHEN,
    )


def _wire(msg: EmailMessage) -> bytes:
    return to_bytes(msg)


def _reparse(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(to_bytes(msg), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _content(part: MIMEPart) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def _raw_header_lines(data: bytes) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")


def _unfolded_raw(data: bytes, name: str) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    unfolded = re.sub(r"\r\n[ \t]", " ", head)
    prefix = name.lower() + ":"
    return [line[len(prefix) :].strip() for line in unfolded.split("\r\n") if line.lower().startswith(prefix)]


def test_multipart_alternative_with_text_first() -> None:
    msg = _reparse(_compose(text="plain body", html="<p>html body</p>"))
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["MIME-Version"] == "1.0"
    parts = list(msg.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    assert all("MIME-Version" not in part for part in parts)
    assert _content(parts[0]) == "plain body\n"
    assert _content(parts[1]) == "<p>html body</p>\n"


def test_text_only_message() -> None:
    msg = _reparse(_compose(html=None, text="just text"))
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert _content(msg) == "just text\n"


def test_basic_headers() -> None:
    data = _wire(_compose())
    msg = _reparse(_compose())
    assert parsedate_to_datetime(msg["Date"]) == WHEN
    assert msg["From"].addresses[0].addr_spec == f"notifications@{DOMAIN}"
    assert msg["From"].addresses[0].display_name == "Alice via QAFlow"
    assert msg["To"] == "bob@example.com"
    assert msg["Reply-To"].addresses[0].addr_spec == f"reply+{TOKEN}@{DOMAIN}"
    assert _unfolded_raw(data, "Message-ID") == [f"<post-42.abc@{DOMAIN}>"]
    for required in (b"Date:", b"From:", b"To:", b"Subject:", b"Message-ID:", b"MIME-Version:"):
        assert sum(line.startswith(required) for line in _raw_header_lines(data)) == 1


def test_wire_format_is_crlf_and_lines_are_short() -> None:
    body = "word " * 600 + "\n" + "x" * 2500 + "\n"
    data = _wire(_compose(text=body, html="<div>" + "y" * 3000 + "</div>", subject="s" * 1500))
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    parsed = _reparse(_compose(text=body))
    plain = parsed.get_body(("plain",))
    assert isinstance(plain, EmailMessage)
    assert _content(plain) == body
    assert str(parsed["Subject"]) == "How do I parse mail?"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("plain ascii\n", "7bit"),
        ("a" * 900 + "\n", "7bit"),
        ("a" * 1200 + "\n", "quoted-printable"),
        ("Grüße aus Köln, schöne Grüße\n", "quoted-printable"),
        ("Ça coûte 3 €, réservé à l'élève\n", "quoted-printable"),
        ("日本語のテキストです。" * 20 + "\n", "base64"),
        ("Привет, как дела? Всё хорошо.\n", "base64"),
    ],
)
def test_transfer_encoding_is_seven_bit_safe(body: str, expected: str) -> None:
    assert transfer_encoding(body) == expected
    msg = _reparse(_compose(text=body, html=None))
    assert msg["Content-Transfer-Encoding"] == expected
    assert _content(msg) == body
    assert to_bytes(_compose(text=body, html=None)).isascii()


def test_injected_subject_stays_one_header() -> None:
    data = _wire(_compose(subject="Hi\r\nBcc: x@evil"))
    lines = _raw_header_lines(data)
    assert sum(line.lower().startswith(b"subject:") for line in lines) == 1
    assert not any(line.lower().startswith(b"bcc:") for line in lines)
    msg = _reparse(_compose(subject="Hi\r\nBcc: x@evil"))
    assert msg.get_all("Subject") == ["Hi Bcc: x@evil"]
    assert msg["Bcc"] is None


def test_hostile_display_name_stays_one_from_header() -> None:
    hostile = 'Zoë\r\nBcc: x@evil\x00 \u202eevil\u202c "Quoted", Jr. <fake@bank.example>'
    name = via_display_name(hostile, "QAFlow")
    data = _wire(_compose(from_name=name))
    lines = _raw_header_lines(data)
    assert sum(line.lower().startswith(b"from:") for line in lines) == 1
    assert not any(line.lower().startswith(b"bcc:") for line in lines)
    msg = _reparse(_compose(from_name=name))
    (sender,) = msg["From"].addresses
    assert sender.addr_spec == f"notifications@{DOMAIN}"
    assert msg["Bcc"] is None
    expected = 'Zoë Bcc: x@evil evil "Quoted", Jr. <fake@bank.example> via QAFlow'
    assert _rfc2047_display_name(data) == expected


def test_ascii_display_name_is_quoted_when_needed() -> None:
    name = via_display_name('Bob "the builder", Jr.', "QAFlow")
    data = _wire(_compose(from_name=name))
    assert _unfolded_raw(data, "From") == [f'"Bob \\"the builder\\", Jr. via QAFlow" <notifications@{DOMAIN}>']
    assert _reparse(_compose(from_name=name))["From"].addresses[0].display_name == 'Bob "the builder", Jr. via QAFlow'


def _rfc2047_display_name(data: bytes) -> str:
    # Decoded by the letter of RFC 2047 (6.2: whitespace between adjacent encoded words is dropped). The
    # modern stdlib parser inserts a space there in address headers (CPython gh-128110), real clients don't.
    (raw_from,) = _unfolded_raw(data, "From")
    phrase = raw_from.rsplit(" <", 1)[0]
    return str(make_header(decode_header(phrase)))


def test_non_ascii_subject_is_encoded_and_decodes_back() -> None:
    subject = "Frage zu Umlauten: äöü — 日本語 " + "lang " * 30
    data = _wire(_compose(subject=subject))
    assert data.isascii()
    assert b"=?utf-8?" in data
    assert str(_reparse(_compose(subject=subject))["Subject"]) == " ".join(subject.split())


def test_clean_header_text() -> None:
    assert clean_header_text("a\r\nb\tc\x00d\x7fe\u2028f\u0085g") == "a b c d e f g"
    assert clean_header_text("  many   spaces \n") == "many spaces"
    assert clean_header_text("abc\u202edef") == "abc def"
    assert clean_header_text("bad \udcff surrogate") == "bad \ufffd surrogate"
    assert clean_header_text("emoji 👩‍👩‍👧 stays") == "emoji 👩‍👩‍👧 stays"


def test_via_display_name() -> None:
    assert via_display_name("Alice", "QAFlow") == "Alice via QAFlow"
    assert via_display_name("  ", "QAFlow") == "QAFlow"
    long_name = via_display_name("x" * 500, "QAFlow")
    assert long_name.endswith("… via QAFlow")
    assert len(long_name) == 64 + len(" via QAFlow")


def test_list_headers() -> None:
    data = _wire(_compose())
    assert _unfolded_raw(data, "List-Id") == [f'"Python" <python.{DOMAIN}>']
    assert _unfolded_raw(data, "List-Post") == [f"<mailto:python@{DOMAIN}>"]
    assert _unfolded_raw(data, "List-Archive") == ["<https://forum.example.org/c/python>"]
    assert _unfolded_raw(data, "List-Unsubscribe") == [
        f"<https://forum.example.org/email/unsubscribe/{TOKEN}>, <mailto:unsubscribe+{TOKEN}@{DOMAIN}>"
    ]
    assert _unfolded_raw(data, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert b"=?" not in b"".join(line for line in _raw_header_lines(data) if line.startswith(b"List-"))


def test_automation_headers_are_always_present() -> None:
    for list_headers in (LIST, None):
        data = _wire(_compose(list_headers=list_headers))
        assert _unfolded_raw(data, "Precedence") == ["list"]
        assert _unfolded_raw(data, "Auto-Submitted") == ["auto-generated"]
        assert _unfolded_raw(data, "X-Auto-Response-Suppress") == ["All"]
        assert _unfolded_raw(data, "X-Loop") == [loop_marker(DOMAIN)] == [f"qaflow@{DOMAIN}"]
    assert not _unfolded_raw(_wire(_compose(list_headers=None)), "List-Id")


def test_list_without_posting_or_https_unsubscribe() -> None:
    headers = ListHeaders(
        list_id=list_id_value("Announcements", slug="announce", domain=DOMAIN),
        post=None,
        archive=None,
        unsubscribe_mailto=f"mailto:unsubscribe+{TOKEN}@{DOMAIN}?subject=unsubscribe",
        unsubscribe_https=None,
    )
    data = _wire(_compose(list_headers=headers))
    assert _unfolded_raw(data, "List-Post") == ["NO"]
    assert _unfolded_raw(data, "List-Archive") == []
    assert _unfolded_raw(data, "List-Unsubscribe") == [f"<mailto:unsubscribe+{TOKEN}@{DOMAIN}?subject=unsubscribe>"]
    assert _unfolded_raw(data, "List-Unsubscribe-Post") == []


def test_one_click_needs_https() -> None:
    headers = ListHeaders(
        list_id="<x.example.org>",
        post=None,
        archive=None,
        unsubscribe_mailto=None,
        unsubscribe_https="http://forum.example.org/u/x",
    )
    with pytest.raises(ValueError, match="https"):
        _compose(list_headers=headers)


def test_list_id_value() -> None:
    assert list_id_value('Say "hi" \\ there', slug="chat", domain="Forum.Example.org") == (
        '"Say \\"hi\\" \\\\ there" <chat.forum.example.org>'
    )
    assert list_id_value("", slug="chat", domain=DOMAIN) == f"<chat.{DOMAIN}>"
    with pytest.raises(ValueError):
        list_id_value("x", slug="bad slug", domain=DOMAIN)
    name = "Café & Crème — 日本語のカテゴリ, with <specials>"
    headers = ListHeaders(
        list_id=list_id_value(name, slug="cafe", domain=DOMAIN),
        post=None,
        archive=None,
        unsubscribe_mailto=None,
        unsubscribe_https=None,
    )
    msg = _reparse(_compose(list_headers=headers))
    assert str(msg["List-Id"]) == f"{name} <cafe.{DOMAIN}>"
    assert max(len(word) for word in list_id_value(name, slug="cafe", domain=DOMAIN).split()) <= 75


def test_threading_headers() -> None:
    data = _wire(_compose(in_reply_to="parent@example.com", references=["root@example.com", "<mid@example.com>"]))
    assert _unfolded_raw(data, "In-Reply-To") == ["<parent@example.com>"]
    assert _unfolded_raw(data, "References") == ["<root@example.com> <mid@example.com> <parent@example.com>"]


def test_long_message_ids_are_never_encoded() -> None:
    data = _wire(_compose(in_reply_to=LONG_OUTLOOK_ID, references=[LONG_OUTLOOK_ID.replace("AM0", "BM0")]))
    assert _unfolded_raw(data, "In-Reply-To") == [f"<{LONG_OUTLOOK_ID}>"]
    assert _unfolded_raw(data, "References")[0].endswith(f"<{LONG_OUTLOOK_ID}>")
    assert b"=?" not in data.split(b"\r\n\r\n", 1)[0].split(b"List-Id")[0]
    parsed = parse_message(data)
    assert parsed.message_id == f"post-42.abc@{DOMAIN}"
    assert parsed.in_reply_to == (LONG_OUTLOOK_ID,)
    assert parsed.references[-1] == LONG_OUTLOOK_ID


def test_references_are_deduplicated_capped_and_end_with_the_parent() -> None:
    refs = [f"r{i}@example.com" for i in range(40)]
    data = _wire(_compose(in_reply_to="r5@example.com", references=[*refs, "r1@example.com"]))
    (chain,) = _unfolded_raw(data, "References")
    ids = chain.split()
    assert len(ids) == MAX_REFERENCES
    assert ids[0] == "<r0@example.com>"
    assert ids[-1] == "<r5@example.com>"
    assert len(set(ids)) == len(ids)


def test_bracketed_parent_ids_are_accepted() -> None:
    data = _wire(_compose(in_reply_to="<parent@example.com>", references=["<root@example.com>"]))
    assert _unfolded_raw(data, "In-Reply-To") == ["<parent@example.com>"]
    assert _unfolded_raw(data, "References") == ["<root@example.com> <parent@example.com>"]


def test_references_must_not_be_a_bare_string() -> None:
    with pytest.raises(TypeError):
        _compose(references="root@example.com")


def test_invalid_reference_ids_are_dropped() -> None:
    data = _wire(_compose(in_reply_to="no at sign", references=["ok@example.com", "bad id@x", "bäd@x", ""]))
    assert _unfolded_raw(data, "In-Reply-To") == []
    assert _unfolded_raw(data, "References") == ["<ok@example.com>"]


def test_extra_headers_add_and_override_automation_headers() -> None:
    data = _wire(
        _compose(
            extra_headers={"auto-submitted": "auto-replied", "X-QAFlow-Kind": "notice\r\nBcc: x@evil"},
            list_headers=None,
        )
    )
    assert _unfolded_raw(data, "Auto-Submitted") == ["auto-replied"]
    assert _unfolded_raw(data, "X-QAFlow-Kind") == ["notice Bcc: x@evil"]
    assert not any(line.lower().startswith(b"bcc:") for line in _raw_header_lines(data))


@pytest.mark.parametrize("name", ["Bcc", "From", "subject", "Content-Type", "X-Loop", "Bad Name", "A:B"])
def test_extra_headers_cannot_replace_structural_headers(name: str) -> None:
    with pytest.raises(ValueError):
        _compose(extra_headers={name: "x"})


def test_list_extra_headers_conflict_with_list_headers() -> None:
    with pytest.raises(ValueError):
        _compose(extra_headers={"List-Id": "<x.example.org>"})


@pytest.mark.parametrize("to", ["bob@example.com\r\nBcc: x@evil", "a@b.example, c@d.example", "nobody", "bö@x.org"])
def test_bad_recipients_are_refused(to: str) -> None:
    with pytest.raises(ValueError):
        _compose(to=to)


def test_naive_date_and_bad_message_id_are_refused() -> None:
    base = {
        "from_name": "x",
        "from_address": f"notifications@{DOMAIN}",
        "to": "bob@example.com",
        "subject": "s",
        "text": "t",
        "html": None,
        "in_reply_to": None,
        "references": (),
        "reply_to": None,
        "list_headers": None,
    }
    with pytest.raises(ValueError, match="timezone"):
        compose(**base, message_id=f"a@{DOMAIN}", date=datetime(2024, 1, 1))  # type: ignore[arg-type]
    for bad in ("<a@b>", "no-at-sign", "a b@c"):
        with pytest.raises(ValueError, match="Message-ID"):
            compose(**base, message_id=bad, date=WHEN)  # type: ignore[arg-type]


def test_date_keeps_its_offset() -> None:
    berlin = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    msg = compose(
        from_name="x",
        from_address=f"notifications@{DOMAIN}",
        to="bob@example.com",
        subject="s",
        text="t",
        html=None,
        message_id=f"a@{DOMAIN}",
        in_reply_to=None,
        references=(),
        reply_to=None,
        list_headers=None,
        date=berlin,
    )
    assert _unfolded_raw(to_bytes(msg), "Date") == ["Wed, 01 May 2024 14:30:00 +0200"]


def test_make_message_id_is_stable_and_well_formed() -> None:
    first = make_message_id("post", "123", domain="Forum.Example.org", salt="")
    assert first == make_message_id("post", "123", domain="forum.example.org", salt="")
    assert re.fullmatch(r"post-123\.[0-9a-f]{10}@forum\.example\.org", first)
    assert first != make_message_id("post", "124", domain=DOMAIN, salt="")
    assert first != make_message_id("digest", "123", domain=DOMAIN, salt="")
    assert make_message_id("post", "123", domain="other.example", salt="") != first.replace(DOMAIN, "other.example")
    for kind, ident in (("post", "1 2"), ("po<st", "1"), ("post", ""), ("post", ".1")):
        with pytest.raises(ValueError):
            make_message_id(kind, ident, domain=DOMAIN, salt="")


def test_the_installation_salt_changes_every_minted_id_and_is_recognised_only_with_it() -> None:
    unsalted = make_message_id("post", "1", domain=DOMAIN, salt="")
    salted = make_message_id("post", "1", domain=DOMAIN, salt="a1b2c3d4")
    assert salted != unsalted and salted == make_message_id("post", "1", domain=DOMAIN, salt="a1b2c3d4")
    assert salted != make_message_id("post", "1", domain=DOMAIN, salt="e5f6a7b8")
    assert re.fullmatch(r"post-1\.[0-9a-f]{10}@" + re.escape(DOMAIN), salted)
    assert is_our_message_id(salted, domain=DOMAIN, salt="a1b2c3d4")
    assert not is_our_message_id(salted, domain=DOMAIN, salt="")
    assert is_our_message_id(unsalted, domain=DOMAIN, salt="")
