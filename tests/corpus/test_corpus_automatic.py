"""Automatic-mail recognition and bounce reading on the real mail in ../shared/corpora.

The figures reached (bench/corpus_automatic.py prints them): flufl_bounce 134/134 expected addresses found,
113/113 bounces classified BOUNCE (none posted), 133/134 permanent/temporary kinds as stated (dsn_02's
"Action: failed, Status: 4.4.7" is a soft bounce for us, as in Discourse); discourse-emails: no crash, none of
the automatic samples posted, and exactly the list-relayed human mails (Precedence: list) held back besides
them; the other corpora: no crash.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qaflow_mail.corpus.bounces import (
    DiscourseFigures,
    FluflFigures,
    is_discourse_automatic,
    measure_discourse,
    measure_flufl,
    sweep,
)
from qaflow_mail.mail.automatic import MailKind

pytestmark = pytest.mark.corpus

CORPORA = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora"

# Human mail relayed by a mailing list: Precedence: list keeps it out, by rule (a list mirror would need an
# explicit exception, as Discourse has).
# Human mail relayed by a list is judged by its sender (defect 6): only a bare `Precedence: list` with no list
# header at all still reads as automatic (Discourse's auto_generated_precedence sample has that shape).
BARE_PRECEDENCE = frozenset({"historical/no_return_path.eml"})


def _corpus(name: str) -> Path:
    path = CORPORA / name
    if not path.is_dir():
        pytest.skip(f"shared corpora not present (../shared/corpora): {path}")
    return path


@pytest.fixture(scope="module")
def flufl() -> FluflFigures:
    return measure_flufl(_corpus("flufl_bounce"))


@pytest.fixture(scope="module")
def discourse() -> DiscourseFigures:
    return measure_discourse(_corpus("discourse-emails"))


def test_flufl_no_crash_and_no_bounce_posted(flufl: FluflFigures) -> None:
    assert flufl.crashes == ()
    assert len(flufl.bounce_files) == 113
    assert flufl.bounces_posted == ()
    assert flufl.bounces_not_bounce == ()
    assert flufl.not_read == ()


def test_flufl_expected_addresses_found(flufl: FluflFigures) -> None:
    assert flufl.expected_addresses == 134
    assert flufl.share_found >= 0.95
    assert flufl.missing_addresses == ()


def test_flufl_hard_and_soft_as_stated(flufl: FluflFigures) -> None:
    assert flufl.kind_checked == 134
    assert flufl.kind_disagreements == ("dsn_02.txt: zzzzz@example.uk key permanent, ours temporary",)


def test_flufl_non_bounces(flufl: FluflFigures) -> None:
    verdicts = dict(line.split(": ", 1) for line in flufl.non_bounce_verdicts)
    # A personal reply stays a post; an auto-reply and two address-less bounces the key leaves unmarked do not.
    assert verdicts["groupwise_03.txt"].startswith("post")
    assert verdicts["qmail_08.txt"].startswith("auto_reply")
    assert verdicts["bounce_01.txt"].startswith("bounce")
    assert verdicts["simple_43.txt"].startswith("bounce")


def test_discourse_no_crash_and_no_automatic_sample_posted(discourse: DiscourseFigures) -> None:
    assert discourse.crashes == ()
    assert discourse.files == 171
    assert len(discourse.automatic) == 16
    assert discourse.automatic_posted == ()


def test_discourse_bounces_are_bounces(discourse: DiscourseFigures) -> None:
    for classified in discourse.verdicts:
        if "bounce" in classified.name:
            assert classified.verdict is not None
            assert classified.verdict.kind is MailKind.BOUNCE, classified


def test_discourse_only_automatic_mail_is_held_back(discourse: DiscourseFigures) -> None:
    """Regression (defect 6): mailman_*, mailinglist*, and the Google Groups reply_to_different_to_from* samples are
    people's mail relayed by a list, and are posts."""
    held_back = {c.name for c in discourse.verdicts if c.verdict is None or c.verdict.kind is not MailKind.POST}
    expected = {c.name for c in discourse.verdicts if is_discourse_automatic(c.name)} | BARE_PRECEDENCE
    assert held_back == expected


def test_other_corpora_never_crash() -> None:
    figures = sweep(_corpus("notmuch").parent)
    assert figures.messages > 900
    assert figures.crashes == ()
