"""Pipermail's obfuscated addresses and list subject tags (mail.list_archive)."""

from __future__ import annotations

import time

import pytest

from qaflow_mail.mail.list_archive import deobfuscated_sender, list_tags, strip_subject_tags, subject_tag


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("goran at example.com (Goran Ivanovic)", ("Goran Ivanovic", "goran@example.com")),
        ("goran at example.com", ("", "goran@example.com")),
        ("goran.i at mail dot example dot com", ("", "goran.i@mail.example.com")),
        ("Goran Ivanovic <goran at example.com>", ("Goran Ivanovic", "goran@example.com")),
        ('"Goran Ivanovic" <goran at Example . COM>', ("Goran Ivanovic", "goran@example.com")),
    ],
)
def test_obfuscated_addresses(value: str, expected: tuple[str, str]) -> None:
    assert deobfuscated_sender(value) == expected


@pytest.mark.parametrize("value", ["Goran", "look at this", "goran at localhost", "goran@example.com"])
def test_not_obfuscated(value: str) -> None:
    assert deobfuscated_sender(value) is None


def test_hostile_from_stays_fast() -> None:
    started = time.perf_counter()
    deobfuscated_sender("a at " + "b . " * 20000 + "!")
    deobfuscated_sender("x " * 50000 + "<a at b")
    assert time.perf_counter() - started < 1.0


def test_subject_tags() -> None:
    assert subject_tag("Re: [users@httpd] ProxyPass") == "users@httpd"
    assert subject_tag("[Foo-devel] patch") == "Foo-devel"
    assert subject_tag("ProxyPass [solved]") is None
    tags = frozenset({"users@httpd"})
    assert strip_subject_tags("Re: [users@httpd] ProxyPass", tags) == "Re: ProxyPass"
    assert strip_subject_tags("[users@httpd] ProxyPass", tags) == "ProxyPass"
    assert strip_subject_tags("[PATCH] ProxyPass", tags) == "[PATCH] ProxyPass"


def test_the_tag_naming_the_list() -> None:
    tags = ["users@httpd", "users@httpd", "PATCH", None]
    assert list_tags(tags, ["Apache HTTP Server Users List <users.httpd.apache.org>"]) == {"users@httpd"}
    assert list_tags(["Foo-devel", "Foo-devel", "PATCH", None, None], []) == {"Foo-devel"}
    assert list_tags(["PATCH", None, None, None, None, None, None], []) == frozenset()
