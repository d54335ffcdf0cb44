"""Hostile mail stays cheap: bodies and headers built to make backtracking regexes go quadratic.

Each slow-path test measures the CPU time (time.process_time: time this process spent
computing, not time spent waiting for other processes) of one call and compares it to
_CPU_BOUND. The current code needs about half a second at most for any input here; the
code it replaced needed 6 s to 9 minutes for the same inputs (the figure is noted by each
case). A bound of 5 s leaves a margin of ten for a slow or busy machine and still fails
every one of the old slow paths; a CPU-time alarm stops a call at twice the bound, so a
regression fails in seconds instead of running for minutes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from qaflow_mail.config import Settings
from qaflow_mail.db.models import Source
from qaflow_mail.mail.addresses import NewTopic
from qaflow_mail.mail.charsets import decode_header
from qaflow_mail.mail.content import extract_content
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.mail.quotes import split_reply
from qaflow_mail.mail.sanitize import html_to_text, sanitize_html
from qaflow_mail.pipeline import Context
from qaflow_mail.pipeline import body as body_reader
from qaflow_mail.pipeline.steps import extract_body as extract_body_step

_CPU_BOUND = 5.0


class _OverBudget(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _OverBudget


def _cpu_seconds(work: Callable[[], object]) -> float:
    """CPU seconds `work` took; it is interrupted (regex matching included) at twice _CPU_BOUND."""
    previous = signal.signal(signal.SIGPROF, _stop)
    signal.setitimer(signal.ITIMER_PROF, 2 * _CPU_BOUND)
    started = time.process_time()
    try:
        work()
    except _OverBudget:
        pass
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
    return time.process_time() - started


def _mail(headers: str, body: str, *, sender: str = "Bob <bob@example.net>", to: str = "general@forum.test") -> bytes:
    head = f"From: {sender}\r\nTo: {to}\r\nMessage-ID: <h1@example.net>\r\n" + headers
    return (head + "\r\n" + body.replace("\n", "\r\n")).encode("utf-8")


def _attachment_mail(disposition: str) -> bytes:
    return _mail(
        "Subject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n",
        "--XX\nContent-Type: text/plain\n\nSee the file.\n--XX\n"
        f"Content-Type: application/octet-stream\nContent-Disposition: {disposition}\n"
        "Content-Transfer-Encoding: base64\n\nZGF0YQ==\n--XX--\n",
    )


# Reply bodies handed straight to the trimmer (no size cap in front of it). The figure after
# each is the CPU time the quadratic code took; cases without one are guards (always linear).
_BODIES = {
    # the review's demo: enclosure openers, no closer (18 s)
    "named-enclosure-openers": "<<<\nhi\n" + ">>> a >>>\nx\n" * 8000,
    # closers that never match their opener's name (10 s)
    "named-enclosure-wrong-closers": ">>> a >>>\nx\n<<< b <<<\n" * 4000,
    # ">>>>" openers with the only "<<<<" before them (16 s)
    "enclosure-openers": "<<<<\nhi\n" + ">>>>\nx\n" * 16000,
    # PGP signature openers without an END line (16 s)
    "pgp-begin-without-end": "hi\n" + "-----BEGIN PGP SIGNATURE-----\nx\n" * 10000,
    # an "Unsubscribe:" line full of "@" that does not end the body (13 s)
    "unsubscribe-at-signs": "hi\nUnsubscribe: " + "@" * 25000 + "\nmore",
    # alias-style quote marks on one long line (12 s)
    "alias-quote-marks": "x\n" + '>>>>> "a" == ' * 23000 + "\nmore",
    # one long line of "wrote on" / "schrieb am" without a colon (7 s, 6 s)
    "wrote-on-line": "x wrote on y " * 8000 + "\n",
    "schrieb-am-line": "x schrieb am y " * 7000 + "\n",
    # code fence openers that never close (25 s)
    "code-fence-openers": "```a\n" * 30000,
    "code-fences": "```\nx\n```\n" * 10000,
    "quote-lines-100kb": "> \n" * 34000,
    "on-wrote-lines-200kb": "On x wrote:\n" * 17000,
    "one-line-1mb": "a" * 1_000_000,
    "one-quote-line-1mb": ">" * 1_000_000,
}


@pytest.mark.parametrize("body", _BODIES.values(), ids=_BODIES.keys())
def test_trimming_a_hostile_body_is_cheap(body: str) -> None:
    assert _cpu_seconds(lambda: split_reply(body)) < _CPU_BOUND


_SOUP = "=?a?q?_" * 20000  # encoded-word openers without a closer: 140 KB
_VALID_WORDS = "=?utf-8?q?a?= " * 10000
_QUOTE_SOUP = '"a' * 40000  # the standard library's header parser is quadratic in its tokens

_MANY_CC = "".join(f"Cc: {i}{_QUOTE_SOUP[:2000]}\r\n" for i in range(500))
_MANY_PARTS = "".join(
    f'--XX\nContent-Type: application/octet-stream; name="{i}{_QUOTE_SOUP[:2000]}"\n\nx\n' for i in range(500)
)

# Whole mails through parse_message and extract_content, as the gateway handles them.
_MAILS = {
    # the review's demo (31 s)
    "subject-encoded-word-soup": _mail(f"Subject: {_SOUP}\r\n", "hi\n"),
    "subject-encoded-words": _mail(f"Subject: {_VALID_WORDS}\r\n", "hi\n"),
    # (20 s)
    "from-encoded-word-soup": _mail(
        f"Subject: s\r\nReply-To: {_SOUP}\r\n", "hi\n", sender=f"{_SOUP} <bob@example.net>"
    ),
    "from-encoded-words": _mail("Subject: s\r\n", "hi\n", sender=f"{_VALID_WORDS}<bob@example.net>"),
    # (41 s, 48 s)
    "from-quote-soup": _mail("Subject: s\r\n", "hi\n", sender=_QUOTE_SOUP),
    "cc-quote-soup": _mail(f"Subject: s\r\nCc: {_QUOTE_SOUP}\r\n", "hi\n"),
    # (31 s, 30 s, 95 s)
    "filename-encoded-word-soup": _attachment_mail(f'attachment; filename="{_SOUP}"'),
    "filename-quote-soup": _attachment_mail(f'attachment; filename="{_QUOTE_SOUP}"'),
    "content-type-quote-soup": _mail(f'Subject: s\r\nContent-Type: text/plain; name="{_QUOTE_SOUP}"\r\n', "hi\n"),
    # 1 MB of Cc headers, or of parts, each holding a quote soup (30 s, 65 s)
    "many-cc-quote-soups": _mail(f"Subject: s\r\n{_MANY_CC}", "hi\n"),
    "many-parts-quote-soups": _mail(
        "Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n",
        f"--XX\nContent-Type: text/plain\n\nhi\n{_MANY_PARTS}--XX--\n",
    ),
    # the review's end-to-end demo body (30 s)
    "body-enclosure-openers": _mail("Subject: q\r\n", "<<<\nhi\n" + ">>> a >>>\nx\n" * 10000),
    # a 1 MB line of "wrote on" (9 minutes)
    "body-wrote-on-line-1mb": _mail("Subject: q\r\n", "x wrote on y " * 80000),
    "body-on-wrote-lines-200kb": _mail("Subject: q\r\n", "hi\n\n" + "On x wrote:\n" * 17000),
}


@pytest.mark.parametrize("raw", _MAILS.values(), ids=_MAILS.keys())
def test_parsing_and_extracting_a_hostile_mail_is_cheap(raw: bytes) -> None:
    assert _cpu_seconds(lambda: extract_content(parse_message(raw))) < _CPU_BOUND


_NESTED = "(" * 20000  # deeper than the standard library's recursive parsers can follow


@pytest.mark.parametrize(
    "raw",
    [
        _mail("Subject: s\r\n", "hi\n", sender=_NESTED),
        _mail("Subject: s\r\n", "hi\n", to=_NESTED),
        _mail(f"Subject: s\r\nContent-Type: text/plain; a={_NESTED}\r\n", "hi\n"),
        _mail(f"Subject: s\r\nContent-Disposition: inline; a={_NESTED}\r\n", "hi\n"),
    ],
    ids=["from", "to", "content-type", "content-disposition"],
)
def test_deeply_nested_comments_never_raise(raw: bytes) -> None:
    assert parse_message(raw).text == "hi\n"


# --- the linear rewrites keep what the regexes did ------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Thanks, fixed.\n\n>>> Bob >>>\nHow do I fix it?\n<<< Bob <<<", ("Thanks, fixed.", "> How do I fix it?")),
        ("Thanks, fixed.\n\n>>>>\nHow do I fix it?\n<<<<", ("Thanks, fixed.", "> How do I fix it?")),
        ("Fixed.\n\n>>> Bob >>>\n\n<<< Bob <<<\nold\n<<< Bob <<<", ("Fixed.", "> \n> <<< Bob <<<\n> old")),
        ("Looks good.\n\n-----BEGIN PGP SIGNATURE-----\n\niQEzBAEB\n-----END PGP SIGNATURE-----", ("Looks good.", "")),
        (
            "Looks good.\n\nUnsubscribe: leave@lists.example.org\n<http://lists.example.org/leave>\n",
            ("Looks good.", ""),
        ),
        ('Agreed.\n\n>>>>> "Bob" == Bob Smith writes:\n\nBob> what about tabs?', ("Agreed.", "> what about tabs?")),
        (
            "Try this:\n\n```python\n> not a quote\n```\n\nOn Mon, 1 Jan 2024 Bob <b@example.org> wrote:\n> old",
            (
                "Try this:\n\n```python\n> not a quote\n```",
                "On Mon, 1 Jan 2024 Bob <b@example.org> wrote:\n> old",
            ),
        ),
        (
            "See below.\n\nBob wrote on Mon, 1 Jan 2024\n10:00:\n> old",
            ("See below.", "Bob wrote on Mon, 1 Jan 2024 10:00:\n> old"),
        ),
    ],
    ids=[
        "named-enclosure",
        "enclosure",
        "empty-enclosure-body",
        "pgp",
        "unsubscribe",
        "alias",
        "code-fence",
        "wrote-on",
    ],
)
def test_rewritten_clean_up_keeps_its_results(body: str, expected: tuple[str, str]) -> None:
    assert split_reply(body) == expected


def test_a_body_beyond_the_cap_is_trimmed_from_its_first_100_kb() -> None:
    line = "A long log line that the writer pasted into the reply.\n"
    body = line * 4000  # 220 KB
    content = extract_content(parse_message(_mail("Subject: log\r\n", body)))
    assert content.full_text == body.strip()
    assert 100 * 1024 - len(line) < len(content.text) <= 100 * 1024
    assert content.text.endswith(line.strip())  # cut at a line break
    assert content.text + "\n" + content.elided == body.strip()


def test_a_header_is_decoded_from_its_first_16_kb() -> None:
    decoded = decode_header("=?utf-8?q?caf=C3=A9?= " + "x" * 40000)
    assert decoded.startswith("café xxx")
    assert len(decoded) <= 16 * 1024


def test_a_long_recipient_list_keeps_every_address() -> None:
    recipients = ", ".join(f"Person {i} <p{i}@example.org>" for i in range(1000)) + ", general@forum.test"
    parsed = parse_message(_mail("Subject: s\r\n", "hi\n", to=recipients))
    assert len(parsed.to) == 1001
    assert parsed.to[-1] == "general@forum.test"


def test_an_unquoted_encoded_file_name_is_decoded() -> None:
    name = "=?utf-8?B?VGhpcyBpcyBhIHRlc3QucGRm?="
    parsed = parse_message(_attachment_mail(f"attachment; filename={name}"))
    assert [a.filename for a in parsed.attachments] == ["This is a test.pdf"]


def test_encoded_words_still_decode_next_to_plain_text() -> None:
    assert decode_header("Re: =?utf-8?q?caf=C3=A9?= and =?utf-8?b?w6k=?=") == "Re: café and é"


async def test_extract_body_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def recording(parsed: Any) -> Any:
        seen.append(threading.get_ident())
        return extract_content(parsed)

    monkeypatch.setattr(body_reader, "extract_content", recording)
    parsed = parse_message(_mail("Subject: q\r\n", "The answer is 42.\n"))
    ctx = Context(
        deps=cast(Any, SimpleNamespace(settings=Settings())),
        session=cast(Any, None),
        raw=b"",
        parsed=parsed,
        envelope_from="bob@example.net",
        recipient="general@forum.test",
        destination=NewTopic("general"),
        source=Source.SMTP,
        now=datetime(2025, 1, 1, tzinfo=UTC),
    )
    result = await extract_body_step.extract_body(ctx)
    assert isinstance(result, Context)
    assert result.content is not None and result.content.text == "The answer is 42."
    assert seen and seen[0] != loop_thread


@pytest.mark.parametrize(
    ("name", "work"),
    [
        # a long run of breaks before the last text: the trailing-break regex backtracked over it (9.6 s)
        ("breaks-before-text", lambda: sanitize_html("<p>" + "<hr>" * 20000 + "x</p>")),
        # a long run of spaces inside one line: "[ \t]+$" retried from every space (17.7 s)
        ("spaces-in-pre", lambda: html_to_text("<pre>" + " " * 80000 + "x</pre>")),
    ],
)
def test_sanitising_hostile_html_stays_cheap(name: str, work: Callable[[], object]) -> None:
    assert _cpu_seconds(work) < _CPU_BOUND, name


def test_trailing_breaks_and_spaces_are_still_removed() -> None:
    assert sanitize_html("<p>Hello</p><br><br> <hr>\n") == "<p>Hello</p>"
    assert html_to_text("<p>Hello   </p>") == "Hello"
