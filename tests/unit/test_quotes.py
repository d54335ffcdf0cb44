"""Quoted history and signatures trimmed from reply bodies (hand-written fixtures in tests/fixtures/replies)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qaflow_mail.mail.quotes import classify_line, is_signature_only, split_reply, trim_reply

REPLIES = Path(__file__).resolve().parents[1] / "fixtures" / "replies"
CASES = sorted(p for p in REPLIES.glob("*.txt") if not p.name.endswith(".expected.txt"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_fixture_reply_is_trimmed_to_the_expected_text(path: Path) -> None:
    expected = path.with_name(f"{path.stem}.expected.txt").read_text(encoding="utf-8").strip()
    assert trim_reply(path.read_text(encoding="utf-8")) == expected


def test_fixture_set_covers_the_languages() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize(
    "line",
    [
        "On Mon, Jan 1, 2024 at 10:00 AM John Doe <john@example.com> wrote:",
        "Am 01.01.2024 um 10:00 schrieb John Doe <john@example.com>:",
        "Le lun. 1 janv. 2024 à 10:00, John Doe <john@example.com> a écrit :",
        "El lun, 1 ene 2024 a las 10:00, John Doe (<john@example.com>) escribió:",
        "Op ma 1 jan. 2024 om 10:00 schreef John Doe <john@example.com>:",
        "Il giorno lun 1 gen 2024 alle ore 10:00 John Doe <john@example.com> ha scritto:",
        "Em seg., 1 de jan. de 2024 às 10:00, John Doe <john@example.com> escreveu:",
        "Den mån 1 jan. 2024 kl 10:00 skrev John Doe <john@example.com>:",
        "在 2024年1月1日 星期一 10:00，John Doe <john@example.com> 写道：",
        "John Doe <john@example.com> 于2024年1月1日周一 10:00写道：",
        "2024/01/01 10:00、John Doe <john@example.com>のメール:",
        "1 января 2024 г., в 10:00, John Doe написал(а):",
        "Dne 10.7.2012 13:48, Paul Howarth napsal(a):",
        "-----Original Message-----",
        "---------- Forwarded message ---------",
    ],
)
def test_quote_markers_are_recognised(line: str) -> None:
    assert classify_line(line) == "b"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("Sent from my iPhone", "s"),
        ("Envoyé de mon iPhone", "s"),
        ("Von meinem iPhone gesendet", "s"),
        ("-- ", "d"),
        ("________________________________", "d"),
        ("From: John Doe <john@example.com>", "h"),
        ("Gesendet: Montag, 1. Januar 2024 10:00", "h"),
        ("> quoted", "q"),
        ("", "e"),
        ("I think the door was open on Monday.", "t"),
        ("2024 was a good year, see <http://example.org>", "t"),
    ],
)
def test_line_kinds(line: str, kind: str) -> None:
    assert classify_line(line) == kind


def test_split_returns_the_removed_part() -> None:
    visible, elided = split_reply("Fixed.\n\nOn Mon, Jan 1, 2024 at 9:00 AM Bob <bob@example.org> wrote:\n> Broken?\n")
    assert visible == "Fixed."
    assert elided == "On Mon, Jan 1, 2024 at 9:00 AM Bob <bob@example.org> wrote:\n> Broken?"


def test_inline_reply_keeps_the_interleaved_quotes() -> None:
    text = "> Which port?\n\n2525.\n\n> TLS?\n\nYes.\n\n> Unanswered trailing quote\n"
    assert trim_reply(text) == "> Which port?\n\n2525.\n\n> TLS?\n\nYes."


def test_fenced_code_is_never_trimmed() -> None:
    text = "Try this:\n\n```\n> not a quote\n-- \n```\n\nDone."
    assert trim_reply(text) == text


def test_crlf_and_empty_input() -> None:
    assert trim_reply("Hello\r\n\r\n> old\r\n") == "Hello"
    assert split_reply("  \n ") == ("", "")


def test_signature_only_detection() -> None:
    assert is_signature_only("Sent from my iPhone\n\n> On Mon, Bob wrote:\n> hi")
    assert is_signature_only("-- \nJohn Doe\n\n> quoted")
    assert not is_signature_only("Thanks!\n\nSent from my iPhone")
    assert not is_signature_only("________________________________\nFrom: a\nSent: b\nTo: c\nSubject: d")


@pytest.mark.parametrize(
    "text",
    [
        "x wrote on y\n" * 20000,
        "2016 " * 100000,
        ("2016 " * 150 + "@>\n") * 700,
        "在 something\n" * 20000,
        ("a." * 400 + " wrote @\n") * 1000,
        ">" * 700_000,
        "\n" * 50000 + "x",
    ],
    ids=["wrote-on", "digits", "digits-at", "zh", "dotted-words", "one-long-quote-line", "blank-lines"],
)
def test_hostile_bodies_stay_fast(text: str) -> None:
    started = time.perf_counter()
    trim_reply(text)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    "line",
    [
        "On 11-Apr-2011, at 6:54 PM, Roman Tkachenko <romant@example.com> sent:",
        "ma 1.1.2024 klo 10.00 Matti Meikäläinen <matti@example.com> kirjoitti:",
        "Matti Meikäläinen kirjoitti 1.1.2024 klo 10.00:",
        "W dniu 1.01.2024 o 10:00, Jan Kowalski pisze:",
        "po 1. 1. 2024 v 10:00 odesílatel Jan Novák <jan@example.com> napsal:",
        "01.01.2024 10:00, Иван Петров пишет:",
        "Ali Veli <ali@example.com>, 1 Oca 2024 Pzt, 10:00 tarihinde şunu yazdı:",
        "2024년 1월 1일 (월) 오전 10:00, 홍길동 <hong@example.com>님이 작성:",
        "Vào Th 2, 1 thg 1, 2024 vào lúc 10:00 Nguyễn Văn A <a@example.com> đã viết:",
        "Às 10:00 de 01/01/2024, João Silva <joao@example.com> escreveu:",
        "mån 1 jan. 2024 kl 10:00 skrev Anna Svensson <anna@example.com>:",
        "På 14 september 2015 på 02:23:18, Ola Nordmann (ola@example.com) skrev:",
        "2024年1月1日(月) 10:00 山田太郎 <taro@example.com>:",
        "---- John Smith wrote ----",
        "-----Message d'origine-----",
        "-----Oprindelig meddelelse-----",
        "-----Opprinnelig melding-----",
        "-----Alkuperäinen viesti-----",
        "-----Oryginalna wiadomość-----",
        "-----Původní zpráva-----",
        "-----Mensagem original-----",
        "-----Özgün İleti-----",
        "-----元のメッセージ-----",
        "-----원본 메시지-----",
        "-------- Forwarded Message --------",
        "Anfang der weitergeleiteten Nachricht:",
        "Inicio del mensaje reenviado:",
    ],
)
def test_more_clients_and_languages_are_recognised(line: str) -> None:
    assert classify_line(line) == "b"


@pytest.mark.parametrize(
    "line",
    [
        "I skrev this down on Monday: see below",
        "On Monday the report was sent.",
        "Do you know who wrote this?",
        "---- a horizontal rule ----",
    ],
)
def test_ordinary_lines_are_not_markers(line: str) -> None:
    assert classify_line(line) != "b"


def test_a_marker_at_the_end_of_a_reply_line_is_split_off() -> None:
    text = "reply--- On Wed, Apr 4, 2012 at 3:59 PM, me@example.com wrote:\n> Hi"
    assert trim_reply(text) == "reply"
    quoted_line = "> On Thu, Apr 30, 2020 at 10:07 AM, someone <someone@example.com> wrote:\n> > hi"
    assert trim_reply("Answer.\n\n" + quoted_line) == "Answer."


@pytest.mark.parametrize(
    "text",
    [
        ("x skrev " * 120 + "1:\n") * 100,
        ("1 " * 400 + "kirjoitti\n") * 200,
        ("On " + "a " * 450 + " sent\n") * 200,
        ("---- " + "wrote " * 150 + "\n") * 200,
        ("text On 1 " * 90 + "wrote:\n") * 200,
        ("From: a\nx\n" * 20000),
        ("님이 작성 " * 150 + "\n") * 200,
    ],
    ids=["skrev", "kirjoitti", "sent", "android", "shared-line", "wrapped-headers", "korean"],
)
def test_new_patterns_stay_fast_on_hostile_bodies(text: str) -> None:
    started = time.perf_counter()
    trim_reply(text)
    assert time.perf_counter() - started < 2.0
