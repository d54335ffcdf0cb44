"""mail.untrusted.multipart_depth: the nesting of multipart parts read in one pass over the lines, so a message
nested a thousand deep is refused without the parser's walk, which is quadratic in the depth. It never finds a
message deeper than the parser does (the refusal rests on it), here on the project's own mail and, where present,
on every message of the shared corpora."""

from __future__ import annotations

import email
import email.policy
from email.message import Message
from pathlib import Path

import pytest

from qaflow_mail.config import LimitsSettings
from qaflow_mail.mail.untrusted import multipart_depth, structure_refusal
from tests.conftest import CORPORA, FIXTURES

HEAD = "From: a@example.org\r\nTo: general@forum.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"


def nested(depth: int) -> bytes:
    opening = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n" for i in range(depth))
    closing = "".join(f"\r\n--b{i}--\r\n" for i in reversed(range(depth)))
    return (HEAD + opening + "Content-Type: text/plain\r\n\r\nhello\r\n" + closing).encode()


ALTERNATIVE_IN_MIXED = (HEAD + 'Content-Type: multipart/mixed;\r\n boundary="outer"\r\n\r\n--outer\r\n'
                        'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n--inner\r\n'
                        "Content-Type: text/plain\r\n\r\ntext\r\n--inner\r\n"
                        "Content-Type: text/html\r\n\r\n<p>html</p>\r\n"
                        "--inner--\r\n--outer\r\nContent-Type: text/plain\r\n\r\nmore\r\n--outer--\r\n").encode()


def parser_depth(message: Message) -> int:
    deepest, stack = 0, [(message, 0)]
    while stack:
        node, depth = stack.pop()
        payload = node.get_payload()
        if node.get_content_maintype() == "multipart":
            deepest = max(deepest, depth + 1)
            if isinstance(payload, list):
                stack.extend((child, depth + 1) for child in payload)
        elif isinstance(payload, list):  # message/rfc822: no multipart level of its own
            stack.extend((child, depth) for child in payload)
    return deepest


@pytest.mark.parametrize(("raw", "depth"), [
    ((HEAD + "Content-Type: text/plain\r\n\r\nhello\r\n").encode(), 0),
    (ALTERNATIVE_IN_MIXED, 2),
    (nested(5), 5),
    (nested(1000), 21),  # counting stops just past the limit
])
def test_depth_of_known_shapes(raw: bytes, depth: int) -> None:
    assert multipart_depth(raw, 20) == depth


def test_a_thousand_deep_is_refused_as_too_deeply_nested() -> None:
    assert structure_refusal(nested(1000), LimitsSettings()) == "MIME parts nested deeper than 20 levels"
    assert structure_refusal(ALTERNATIVE_IN_MIXED, LimitsSettings()) is None


def _never_deeper_than_the_parser(paths: list[Path]) -> int:
    checked = 0
    for path in paths:
        raw = path.read_bytes()
        expected = parser_depth(email.message_from_bytes(raw, policy=email.policy.compat32))
        assert multipart_depth(raw, 1000) <= expected, path.name
        checked += 1
    return checked


def test_never_deeper_than_the_parser_on_our_fixtures() -> None:
    assert _never_deeper_than_the_parser(sorted((FIXTURES / "mail").rglob("*.eml"))) >= 10


def test_never_deeper_than_the_parser_on_the_corpora() -> None:
    if not CORPORA.is_dir():
        pytest.skip("the shared corpora are not beside this checkout")
    paths = [p for p in sorted(CORPORA.rglob("*")) if p.is_file() and p.stat().st_size < 5_000_000]
    assert _never_deeper_than_the_parser(paths) > 100
