"""Attachment names made safe; declared types checked against the bytes."""

from __future__ import annotations

import pytest

from qaflow_mail.mail.attachments import MAX_FILENAME_CHARS, check_attachment, inline_cid_map, safe_filename, sniff_type
from qaflow_mail.mail.parse import Attachment

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
PDF = b"%PDF-1.7\n..."
EXE = b"MZ\x90\x00" + b"\x00" * 60


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("../../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
        ("/absolute/path/report.pdf", "report.pdf"),
        (".htaccess", "htaccess"),
        ("...hidden.txt", "hidden.txt"),
        ("bad\x00na\x1bme\r\n.txt", "badname.txt"),
        ("invoice\u202egnp.exe", "invoicegnp.exe"),  # right-to-left override removed
        ('what?"<>|*:.png', "what_______.png"),
        ("CON.txt", "_CON.txt"),
        ("", "attachment"),
        ("../..", "attachment"),
        ("  spaced   name .doc  ", "spaced name .doc"),
    ],
)
def test_safe_filename(name: str, safe: str) -> None:
    assert safe_filename(name) == safe


def test_long_names_are_capped_and_keep_the_extension() -> None:
    safe = safe_filename("a" * 500 + ".tar.gz")
    assert len(safe) <= MAX_FILENAME_CHARS
    assert safe.endswith(".gz")


def _att(name: str, ctype: str, content: bytes) -> Attachment:
    return Attachment(filename=name, content_type=ctype, content=content)


def test_genuine_files_are_accepted() -> None:
    assert check_attachment(_att("shot.png", "image/png", PNG), allowed_types=None) is None
    assert check_attachment(_att("doc.pdf", "application/pdf", PDF), allowed_types={"application/pdf"}) is None
    assert check_attachment(_att("notes.txt", "text/plain", b"hello"), allowed_types={"text/*"}) is None


def test_an_executable_sent_as_an_image_is_refused() -> None:
    reason = check_attachment(_att("holiday.png", "image/png", EXE), allowed_types={"image/png"})
    assert reason is not None and "executable" in reason


def test_a_declared_type_that_lies_is_refused() -> None:
    reason = check_attachment(_att("fake.pdf", "application/pdf", b"<html>not a pdf"), allowed_types=None)
    assert reason is not None and "not" in reason


@pytest.mark.parametrize("name", ["setup.exe", "invoice.pdf.exe", "run.bat", "macro.vbs", "script.js", "x.SCR"])
def test_executable_extensions_are_refused(name: str) -> None:
    assert check_attachment(_att(name, "application/octet-stream", b"data"), allowed_types=None) is not None


def test_types_outside_the_allowlist_are_refused_and_octet_stream_is_sniffed() -> None:
    assert check_attachment(_att("a.png", "image/png", PNG), allowed_types={"application/pdf"}) is not None
    assert check_attachment(_att("blob", "application/octet-stream", PNG), allowed_types={"image/*"}) is None
    assert check_attachment(_att("blob", "application/octet-stream", EXE), allowed_types={"*/*"}) is not None


def test_sniff_type() -> None:
    assert sniff_type(PNG) == "image/png"
    assert sniff_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_type(b"PK\x03\x04rest") == "application/zip"
    assert sniff_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_type(b"plain text") is None


def test_inline_cid_map() -> None:
    logo = Attachment("logo.png", "image/png", PNG, content_id="Logo@Example.com", inline=True)
    plain = _att("a.txt", "text/plain", b"x")
    mapping = inline_cid_map([logo, plain])
    assert mapping["Logo@Example.com"] is logo and mapping["logo@example.com"] is logo
    assert len({id(v) for v in mapping.values()}) == 1


def test_default_types_admit_source_files_but_not_script_capable_ones() -> None:
    assert check_attachment(_att("fix.rb", "application/x-ruby", b"puts 1"), allowed_types=None) is None
    assert check_attachment(_att("log.txt", "text/x-log", b"line"), allowed_types=None) is None
    assert check_attachment(_att("page.html", "text/html", b"<script>"), allowed_types=None) is not None
    assert check_attachment(_att("pic.svg", "image/svg+xml", b"<svg/>"), allowed_types={"image/*"}) is not None
    assert check_attachment(_att("page.html", "text/html", b"<p>"), allowed_types={"text/html"}) is None

