"""Bytes to text: declared, missing, wrong and unknown charsets; RFC 2047 words; broken base64."""

from __future__ import annotations

import base64

import pytest

from qaflow_mail.mail.charsets import codec_for, decode_base64, decode_bytes, decode_header, recover_8bit

JAPANESE = "日本語のメールです。ログはどこにありますか？"
RUSSIAN = "Привет! Как настроить почту на сервере? Спасибо за помощь."


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("ISO-2022-JP", JAPANESE),
        ("koi8-r", RUSSIAN),
        ("windows-1251", RUSSIAN),
        ("windows-1252", "“Smart quotes” – and 5€"),
        ("iso-8859-2", "Dzień dobry, żółw"),
        ("big5", "媽！我上電視了！"),
        ("shift_jis", JAPANESE),
        ("euc-kr", "안녕하세요"),
        ("utf-7", "Hi Mom -☺-!"),
    ],
)
def test_declared_charsets_decode_exactly(label: str, text: str) -> None:
    codec = codec_for(label)[0]
    decoded = decode_bytes(text.encode(codec), label)
    assert decoded.text == text
    assert not decoded.lossy and not decoded.guessed


def test_gb2312_label_reads_gb18030_characters() -> None:
    text = "你好，𠀀 and 镕"  # outside GB2312 proper, common in mail labelled gb2312
    assert decode_bytes(text.encode("gb18030"), "gb2312").text == text


def test_latin1_label_reads_windows_1252_bytes() -> None:
    assert decode_bytes(b"\x93quoted\x94 \x80", "iso-8859-1").text == "“quoted” €"


def test_utf8_mislabelled_as_latin1_is_read_as_utf8() -> None:
    decoded = decode_bytes("Grüße aus Köln".encode(), "iso-8859-1")
    assert decoded.text == "Grüße aus Köln"
    assert decoded.guessed


def test_unknown_label_falls_back_to_detection_without_loss() -> None:
    text = "Добрый день! Это длинное письмо, написанное в кодировке windows-1251 для проверки."
    decoded = decode_bytes(text.encode("cp1251"), "x-unknown-charset")
    assert decoded.text == text
    assert decoded.guessed


def test_invalid_utf8_never_raises_and_keeps_the_text() -> None:
    decoded = decode_bytes(b"caf\xe9 ok", "utf-8")
    assert decoded.text == "café ok"


@pytest.mark.parametrize("label", ["unicode-escape", "rot13", "base64", "idna"])
def test_codecs_that_are_not_charsets_are_never_used(label: str) -> None:
    assert codec_for(label) == ()
    assert decode_bytes(b"\\u0041 plain", label).text == "\\u0041 plain"


def test_header_with_adjacent_words_split_inside_a_character() -> None:
    raw = "Ünï ✓".encode()
    value = f"=?utf-8?b?{base64.b64encode(raw[:3]).decode()}?= =?utf-8?b?{base64.b64encode(raw[3:]).decode()}?="
    assert decode_header(value) == "Ünï ✓"


def test_header_words_in_several_charsets_and_plain_text() -> None:
    value = "Re: =?iso-8859-1?q?Caf=E9?= und =?koi8-r?b?8NLJ18XU?= =?ISO-2022-JP?B?GyRCRnxLXBsoQg==?="
    assert decode_header(value) == "Re: Café und Привет日本"


def test_header_with_raw_8bit_bytes_uses_the_fallback_charset() -> None:
    raw = "Grüße".encode("iso-8859-1").decode("ascii", errors="surrogateescape")
    assert recover_8bit(raw, "iso-8859-1") == "Grüße"
    assert decode_header("Subj: " + raw, fallback="iso-8859-1") == "Subj: Grüße"


def test_header_word_with_wrong_charset_label_is_repaired() -> None:
    assert decode_header("=?UTF-8?Q?Luc=eda_Charlie?=") == "Lucía Charlie"


def test_broken_base64_is_repaired_and_reported() -> None:
    assert decode_base64(b"aGVsbG8gd29ybGQ=\n") == (b"hello world", True)
    data, clean = decode_base64(b"aGVsbG8gd29ybG!!!Q")
    assert data == b"hello world" and not clean
    data, clean = decode_base64(b"aGVsbG8=d29ybGQ=")  # two padded chunks glued together
    assert data == b"helloworld"
