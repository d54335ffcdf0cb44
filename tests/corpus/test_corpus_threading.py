"""Threading against notmuch 0.37's answer keys in ../shared/corpora (see bench/corpus_threading.py for the list).

What the figures say: we never join two messages notmuch keeps apart (precision 1). Every pair notmuch joins and
we do not is either a merge through a junk id (`<yes>`, in lkml: git send-email's prompt answered "yes", which
notmuch follows and so glues a 2009 notmuch patch series to a 2010 cifs series) or a merge through an id that
never arrived (two replies to a message we never got; the gateway has no post to hang them under).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qaflow_mail.corpus.thread_eval import Cause, CorpusResult, PairCounts, evaluate_all
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.mail.threads import parent_candidates

pytestmark = pytest.mark.corpus

CORPORA = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora"


def _corpora() -> Path:
    if not (CORPORA / "notmuch" / "messages.tsv").is_file():
        pytest.skip(f"shared corpora not present (../shared/corpora): {CORPORA}")
    return CORPORA


@pytest.fixture(scope="module")
def results() -> dict[str, CorpusResult]:
    return {r.corpus: r for r in evaluate_all(_corpora())}


def _total(results: dict[str, CorpusResult], attribute: str) -> PairCounts:
    total = PairCounts()
    for r in results.values():
        total += getattr(r, attribute)
    return total


def test_answer_keys_are_read_as_notmuch_built_them(results: dict[str, CorpusResult]) -> None:
    assert {"notmuch", "perceval_mboxes"} <= set(results)
    check = _total(results, "notmuch_rule_check")
    assert check.both == check.ours == check.reference > 6000


def test_we_never_join_what_notmuch_keeps_apart(results: dict[str, CorpusResult]) -> None:
    total = _total(results, "counts")
    assert total.ours > 5000
    assert total.precision == 1.0


def test_f1_against_notmuch(results: dict[str, CorpusResult]) -> None:
    # The honest raw figure: notmuch follows <yes> in lkml (1006 of the 6264 pairs), we do not.
    assert _total(results, "counts").f1 >= 0.91
    assert results["perceval_mboxes"].counts.f1 == 1.0


def test_f1_against_notmuch_without_junk_ids(results: dict[str, CorpusResult]) -> None:
    clean = _total(results, "counts_without_junk")
    assert clean.f1 >= 0.999
    assert clean.precision == 1.0


def test_every_missed_pair_is_explained(results: dict[str, CorpusResult]) -> None:
    missed = {cause: sum(r.missed[cause] for r in results.values()) for cause in Cause}
    assert missed[Cause.FARTHER_REFERENCE] == 0
    assert missed[Cause.UNSEEN_ANCESTOR] <= 3
    total = _total(results, "counts")
    assert sum(missed.values()) == total.reference - total.both
    lkml = [d for d in results["notmuch"].disagreements if d.label == "lkml"]
    assert lkml
    assert {mid for d in lkml for mid in d.junk_ids} == {"yes"}


def test_singleton_corpora_agree_thread_for_thread(results: dict[str, CorpusResult]) -> None:
    for name in ("flufl_bounce", "hyperkitty_testdata", "cpython_email"):
        if name in results:
            same, threads = results[name].threads_identical
            assert same == threads > 0, name


def test_topics_do_not_depend_on_arrival_order(results: dict[str, CorpusResult]) -> None:
    reverse = evaluate_all(_corpora(), order="reverse")
    assert [r.counts for r in reverse] == [r.counts for r in results.values()]
    live = {r.corpus: r for r in evaluate_all(_corpora(), order="reverse", reattach_orphans=False,
                                              join_missing_parents=False)}
    assert live["notmuch"].counts.f1 < 0.5  # without re-attachment, replies before parents split everything


def test_hyperkitty_in_reply_to_traps() -> None:
    folder = _corpora() / "hyperkitty_testdata"
    strange = parse_message((folder / "strange-in-reply-to-header.txt").read_bytes())
    # HyperKitty's get_ref finds the same id in "Other person's message of … <id>".
    assert parent_candidates(
        message_id=strange.message_id, in_reply_to=strange.in_reply_to, references=strange.references
    ) == ("200704070053.46646.other.person@example.com",)


def test_gmane_mangled_in_reply_to_falls_back_to_references() -> None:
    raw = (_corpora() / "notmuch" / "lkml" / "cur" / "1382298770.002912:2,").read_bytes()
    mail = parse_message(raw)
    candidates = parent_candidates(message_id=mail.message_id, in_reply_to=mail.in_reply_to, references=mail.references)
    assert "yes" in mail.references
    assert "yes" not in candidates
    assert candidates[0].endswith("@public.gmane.org")
    assert candidates[1] == "9822.1277312573@redhat.com"
