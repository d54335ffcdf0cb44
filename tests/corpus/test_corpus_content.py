"""The content layer against ../shared/corpora (figures: python bench/corpus_content.py).

Every message (about 1,270: .eml, Maildir files, each message of every mbox) goes through parse_message and
extract_content without a crash, and quote trimming is scored against three answer keys:
Discourse's email_reply_trimmer (64/64 exact), the visible-text assertions of github/zapier email_reply_parser
(19/20: "Sent from my desk, ..." is a signature to Discourse's rules and not to theirs) and talon's reply rules
(standard replies 10/12: talon keeps "Sent from my iPhone" / "-- " signatures, we strip them by design; HTML
replies 9/9 whitespace-insensitive).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qaflow_mail.corpus.trimming import (
    KeyScore,
    SweepFigures,
    score_email_reply_parser,
    score_email_reply_trimmer,
    score_email_reply_trimmer_elided,
    score_talon_html,
    score_talon_standard,
    sweep,
)
from qaflow_mail.mail.quotes import trim_reply

pytestmark = pytest.mark.corpus

CORPORA = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora"


@pytest.fixture(scope="module")
def corpora() -> Path:
    if not (CORPORA / "email_reply_trimmer" / "emails").is_dir():
        pytest.skip(f"shared corpora not present (../shared/corpora): {CORPORA}")
    return CORPORA


@pytest.fixture(scope="module")
def figures(corpora: Path) -> SweepFigures:
    return sweep(corpora)


def test_every_corpus_message_parses_without_a_crash(figures: SweepFigures) -> None:
    assert figures.messages >= 1200
    assert figures.crashes == ()


def test_no_body_part_is_undecodable(figures: SweepFigures) -> None:
    assert figures.undecodable_parts == 0
    assert figures.guessed_charset_parts <= 10


def test_the_corpus_parses_in_seconds(figures: SweepFigures) -> None:
    assert figures.ms_per_message < 25


def _assert_at_least(score: KeyScore, exact: int, normalized: int) -> None:
    assert score.exact >= exact and score.normalized >= normalized, score.failures


def test_email_reply_trimmer_answer_key(corpora: Path) -> None:
    score = score_email_reply_trimmer(corpora)
    assert score.total == 64
    assert score.exact_ratio >= 0.95
    _assert_at_least(score, 64, 64)


def test_email_reply_trimmer_elided_parts(corpora: Path) -> None:
    _assert_at_least(score_email_reply_trimmer_elided(corpora), 64, 64)


def test_email_reply_parser_stated_assertions(corpora: Path) -> None:
    score = score_email_reply_parser(corpora)
    assert score.total == 20
    _assert_at_least(score, 19, 19)
    assert score.failures == ("github/email_sent_from_my_not_signature.txt",)


def test_talon_replies(corpora: Path) -> None:
    standard = score_talon_standard(corpora)
    _assert_at_least(standard, 10, 10)
    assert set(standard.failures) == {"iphone.eml", "sparrow.eml"}  # talon keeps signatures; we strip them
    _assert_at_least(score_talon_html(corpora), 6, 9)


@pytest.mark.parametrize("name", ["github/email_long_quote.txt", "github/pathological.txt", "zapier/pathological.txt"])
def test_performance_traps_finish_well_under_a_second(corpora: Path, name: str) -> None:
    text = (corpora / "email_reply_parser" / name).read_text(encoding="utf-8", errors="replace")
    started = time.perf_counter()
    trim_reply(text)
    assert time.perf_counter() - started < 1.0
