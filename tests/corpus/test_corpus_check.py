"""`qaflow-mail check-corpus` over ../shared/corpora: every message through parse, classification, routing,
trimming and sanitising without a server. No crash; no automatic, bounce or loop sample of discourse-emails and no
bounce of flufl_bounce would be posted; every flufl bounce sent to a VERP address would be recorded; and the
accuracy figures the README quotes hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qaflow_mail.config import Settings
from qaflow_mail.corpus.check import CorpusCheck, check_corpus

pytestmark = pytest.mark.corpus

REPO = Path(__file__).resolve().parents[2]
CORPORA = REPO / ".." / "shared" / "corpora"


@pytest.fixture(scope="module")
def check() -> CorpusCheck:
    if not (CORPORA / "discourse-emails").is_dir():
        pytest.skip(f"shared corpora not present (../shared/corpora): {CORPORA.resolve()}")
    return check_corpus(CORPORA, settings=Settings())


def test_every_message_goes_through_without_a_crash(check: CorpusCheck) -> None:
    assert check.messages > 1200
    assert check.crashes == []
    assert check.undecodable_parts == 0
    assert sum(check.kinds.values()) == check.messages
    assert check.ms_per_message < 50  # about 4 ms here; a pathological slowdown would show
    assert not check.failed


def test_discourse_automatic_samples_are_never_posted(check: CorpusCheck) -> None:
    assert check.discourse["files"] == 171
    assert check.discourse["crashes"] == 0
    assert check.discourse["automatic"] >= 16
    assert check.discourse["automatic_posted"] == []


def test_bounces_are_found_never_posted_and_recorded_via_verp(check: CorpusCheck) -> None:
    bounces = check.bounces
    assert bounces["bounces_posted"] == []
    assert bounces["share_found"] >= 0.95
    assert bounces["recorded_via_verp"] == bounces["bounce_files"] >= 100


def test_trimming_and_threading_figures(check: CorpusCheck) -> None:
    assert check.trimming["email_reply_trimmer"]["normalized_ratio"] >= 0.95
    assert check.trimming["email_reply_parser"]["total"] > 0
    without_junk = check.threading["overall_without_junk"]
    assert without_junk["precision"] == 1.0
    assert without_junk["f1"] >= 0.99
    assert check.threading["overall"]["precision"] == 1.0  # what we split is only the junk ids we refuse


def test_command_on_one_corpus_folder() -> None:
    folder = CORPORA / "discourse-emails"
    if not folder.is_dir():
        pytest.skip(f"shared corpora not present (../shared/corpora): {CORPORA.resolve()}")
    env = {"PATH": "/usr/bin:/bin", "QAFLOW_TOKENS__SECRET": "corpus-check", "QAFLOW_LOGGING__LEVEL": "WARNING"}
    result = subprocess.run([sys.executable, "-m", "qaflow_mail", "check-corpus", str(folder), "--json"], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["messages"] == 171
    assert figures["crashes"] == []
    assert figures["discourse"]["automatic_posted"] == []
    assert figures["trimming"] == {} and figures["threading"] == {}  # no answer keys in that folder
