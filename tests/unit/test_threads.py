"""Threading decisions (mail/threads.py) and the in-memory threader that replays a stream of mail."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from qaflow_mail.corpus.thread_eval import MemoryThreader
from qaflow_mail.mail.parse import ParsedMail, parse_message
from qaflow_mail.mail.threads import (
    MAX_MESSAGE_ID_LENGTH,
    NEW_TOPIC,
    ThreadChoice,
    ThreadVia,
    is_plausible_message_id,
    parent_candidates,
    resolve_parent,
    subject_key,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "threads"


# ------------------------------------------------------------------------------------------- plausible ids


@pytest.mark.parametrize(
    "mid",
    [
        "root-1@mail.users.example",
        "1258498485-sup-142@elly",  # host name without a dot: real ids from the notmuch list
        "019801ca633f$f4376140$dca623c0$@yang@example.com",  # Outlook: '@' in the left part too
        '"c2bapps1.b:026710:20011104074531"@btconnect.com',  # quoted left part
        "CACRHdMZgAgzyhewu_aAJ2f2DWHVZdNH6J7zd2S=YWQuf-2yZDw@example.com",
        "ünïcode@example.de",  # RFC 6532
        "a" * (MAX_MESSAGE_ID_LENGTH - 12) + "@example.com",
    ],
)
def test_real_ids_are_plausible(mid: str) -> None:
    assert is_plausible_message_id(mid)


@pytest.mark.parametrize(
    "mid",
    [
        "",
        "yes",  # git send-email's prompt answered with "yes"
        "RT-Ticket-33575",
        "@example.com",
        "left@",
        "two words@example.com",
        "<root-1@mail.users.example>",  # brackets belong to the header, not to the id
        "tab\t@example.com",
        "nul\x00@example.com",
        "a" * MAX_MESSAGE_ID_LENGTH + "@example.com",
    ],
)
def test_junk_ids_are_not_plausible(mid: str) -> None:
    assert not is_plausible_message_id(mid)


# ------------------------------------------------------------------------------------------- candidates


def test_candidates_are_in_reply_to_then_references_from_last_to_first() -> None:
    candidates = parent_candidates(
        message_id="d@x.example",
        in_reply_to=("c@x.example",),
        references=("a@x.example", "b@x.example", "c@x.example"),
    )
    assert candidates == ("c@x.example", "b@x.example", "a@x.example")


def test_candidates_drop_junk_self_and_repeats() -> None:
    candidates = parent_candidates(
        message_id="self@x.example",
        in_reply_to=("yes", "self@x.example"),
        references=("a@x.example", "yes", "b@x.example", "a@x.example", "self@x.example", "x" * 300 + "@y"),
    )
    assert candidates == ("a@x.example", "b@x.example")


def test_candidates_of_a_message_without_headers_are_empty() -> None:
    assert parent_candidates(message_id="a@x.example", in_reply_to=(), references=()) == ()


def test_only_self_reference_gives_no_candidate() -> None:
    candidates = parent_candidates(message_id="a@x.example", in_reply_to=("a@x.example",), references=("a@x.example",))
    assert candidates == ()


# ------------------------------------------------------------------------------------------- resolve_parent


def test_token_wins_over_headers() -> None:
    choice = resolve_parent(
        token_post_id=7, candidates=("a@x.example",), lookup={"a@x.example": 3}, in_reply_to=("a@x.example",)
    )
    assert choice == ThreadChoice(parent_post_id=7, via=ThreadVia.TOKEN, matched_id=None)


def test_in_reply_to_match() -> None:
    candidates = parent_candidates(
        message_id="c@x.example", in_reply_to=("b@x.example",), references=("a@x.example", "b@x.example")
    )
    choice = resolve_parent(
        token_post_id=None,
        candidates=candidates,
        lookup={"a@x.example": 1, "b@x.example": 2},
        in_reply_to=("b@x.example",),
    )
    assert choice == ThreadChoice(parent_post_id=2, via=ThreadVia.IN_REPLY_TO, matched_id="b@x.example")


def test_references_only_picks_the_last_known_reference() -> None:
    candidates = parent_candidates(
        message_id="d@x.example", in_reply_to=(), references=("a@x.example", "b@x.example", "c@x.example")
    )
    choice = resolve_parent(token_post_id=None, candidates=candidates, lookup={"a@x.example": 1, "b@x.example": 2})
    assert choice == ThreadChoice(parent_post_id=2, via=ThreadVia.REFERENCES, matched_id="b@x.example")


def test_unknown_parent_with_known_grandparent_joins_the_grandparent() -> None:
    candidates = parent_candidates(
        message_id="c@x.example",
        in_reply_to=("b@x.example",),  # never reached us
        references=("a@x.example", "b@x.example"),
    )
    choice = resolve_parent(
        token_post_id=None, candidates=candidates, lookup={"a@x.example": 1}, in_reply_to=("b@x.example",)
    )
    assert choice == ThreadChoice(parent_post_id=1, via=ThreadVia.REFERENCES, matched_id="a@x.example")


def test_nothing_known_is_a_new_topic() -> None:
    choice = resolve_parent(
        token_post_id=None, candidates=("a@x.example",), lookup={"other@x.example": 9}, in_reply_to=()
    )
    assert choice == NEW_TOPIC
    assert choice.via is ThreadVia.NONE


def test_junk_id_in_the_lookup_cannot_be_reached() -> None:
    # Even if something stored were called "yes", a mail pointing at <yes> must not join it.
    candidates = parent_candidates(message_id="p@x.example", in_reply_to=("yes",), references=("yes",))
    assert resolve_parent(token_post_id=None, candidates=candidates, lookup={"yes": 1}) == NEW_TOPIC


# ------------------------------------------------------------------------------------------- subject_key


@pytest.mark.parametrize(
    ("subject", "key"),
    [
        ("How do I reset my password?", "how do i reset my password?"),
        ("Re: How do I  reset my password?", "how do i reset my password?"),
        ("RE[2]: Re: Fwd: Hello", "hello"),
        ("AW: WG: Termin", "termin"),
        ("SV: Vs: hej", "hej"),
        ("Antw: vraag", "vraag"),
        ("Re(3): x", "x"),
        ("Re^2: x", "x"),
        ("TR: RV: R: domanda", "domanda"),
        ("Ответ: привет", "привет"),
        ("回复：你好", "你好"),
        ("Re: [notmuch] [PATCH 1/2] lib: add flags", "lib: add flags"),
        ("[qaflow-users] Re: Question", "question"),
        ("Research: results", "research: results"),
        ("Rewrite: plan", "rewrite: plan"),
        ("Re - not a prefix", "re - not a prefix"),
        ("Re: ", ""),
    ],
)
def test_subject_key(subject: str, key: str) -> None:
    assert subject_key(subject) == key


# ------------------------------------------------------------------------------------------- MemoryThreader


def _add(threader: MemoryThreader, mid: str, *refs: str, irt: tuple[str, ...] = ()) -> None:
    threader.add(message_id=mid, in_reply_to=irt or refs[-1:], references=refs)


def test_reply_joins_its_parents_topic() -> None:
    threader = MemoryThreader()
    _add(threader, "a@x")
    _add(threader, "b@x", "a@x")
    _add(threader, "c@x", "a@x", "b@x")
    assert threader.topics() == {"a@x": ("a@x", "b@x", "c@x")}
    assert threader.parent_of("c@x") == "b@x"


def test_late_parent_adopts_orphans_and_their_descendants() -> None:
    threader = MemoryThreader()
    _add(threader, "c@x", "a@x", "b@x")  # arrives first: starts a topic
    _add(threader, "d@x", "a@x", "b@x", "c@x")  # joins c's topic
    _add(threader, "a@x")  # c names a: c's topic moves under a
    assert threader.topics() == {"a@x": ("c@x", "d@x", "a@x")}
    assert threader.parent_of("c@x") == "a@x"
    assert threader.parent_of("d@x") == "c@x"
    _add(threader, "b@x", "a@x")
    assert threader.topic_of("b@x") == "a@x"
    assert threader.parent_of("c@x") == "a@x"  # no longer an orphan: stays where it is


def test_adopt_nearer_parents_moves_under_a_late_nearer_ancestor() -> None:
    threader = MemoryThreader(adopt_nearer_parents=True)
    _add(threader, "a@x")
    _add(threader, "c@x", "a@x", "b@x")  # b unknown yet: hangs under a
    _add(threader, "b@x", "a@x")
    assert threader.parent_of("c@x") == "b@x"
    assert threader.topics() == {"a@x": ("a@x", "c@x", "b@x")}


def test_live_ingest_does_not_reattach() -> None:
    threader = MemoryThreader(reattach_orphans=False)
    _add(threader, "b@x", "a@x")
    _add(threader, "a@x")
    assert threader.topic_of("b@x") == "b@x"
    assert threader.parent_of("b@x") is None


def test_duplicate_delivery_is_stored_once() -> None:
    threader = MemoryThreader()
    _add(threader, "a@x")
    first = threader.add(message_id="b@x", in_reply_to=("a@x",), references=())
    again = threader.add(message_id="b@x", in_reply_to=(), references=())
    assert not first.duplicate
    assert again.duplicate
    assert threader.topics() == {"a@x": ("a@x", "b@x")}


def test_reference_loop_terminates_in_one_topic() -> None:
    threader = MemoryThreader(adopt_nearer_parents=True)
    _add(threader, "loop-12@x", "loop-21@x")
    _add(threader, "loop-21@x", "loop-12@x")
    assert threader.topics() == {"loop-12@x": ("loop-12@x", "loop-21@x")}
    assert threader.parent_of("loop-12@x") is None
    assert threader.parent_of("loop-21@x") == "loop-12@x"


def test_junk_reference_does_not_glue_topics() -> None:
    threader = MemoryThreader()
    _add(threader, "p1@x", "yes")
    _add(threader, "p2@x", "yes")
    assert set(threader.topics()) == {"p1@x", "p2@x"}


# ------------------------------------------------------------------------------------------- own fixtures


def _fixtures() -> dict[str, ParsedMail]:
    return {path.stem: parse_message(path.read_bytes()) for path in sorted(FIXTURES.glob("*.eml"))}


def _thread(mails: list[ParsedMail], **options: bool) -> MemoryThreader:
    threader = MemoryThreader(**options)
    for mail in mails:
        threader.add(message_id=mail.message_id, in_reply_to=mail.in_reply_to, references=mail.references)
    return threader


def test_fixture_candidates() -> None:
    mails = _fixtures()

    def candidates(name: str) -> tuple[str, ...]:
        m = mails[name]
        return parent_candidates(message_id=m.message_id, in_reply_to=m.in_reply_to, references=m.references)

    assert candidates("phrase-in-reply-to") == ("root-1@mail.users.example",)
    assert candidates("mangled-in-reply-to") == (
        "reply-1-Xq3pT9@public.gmane.example",
        "reply-1@mail.users.example",
        "root-1@mail.users.example",
    )
    assert candidates("self-reference") == ("reply-3@mail.users.example", "root-1@mail.users.example")
    assert candidates("patch-yes-1") == ()


def test_fixture_topics_do_not_depend_on_arrival_order() -> None:
    mails = _fixtures()
    password = {"root-1@mail.users.example"} | {f"reply-{n}@mail.users.example" for n in (1, 2, 3, 4)}
    expected = {
        frozenset(password),
        frozenset({"1717488000-1-git-send-email-one@dev.example"}),
        frozenset({"1717747200-1-git-send-email-two@dev.example"}),
    }
    for order in itertools.permutations(sorted(mails)):
        threader = _thread([mails[name] for name in order])
        assert {frozenset(ids) for ids in threader.topics().values()} == expected, order


def test_fixture_parents_in_order_and_out_of_order() -> None:
    mails = _fixtures()
    in_order = ["root", "reply", "reply-duplicate", "mangled-in-reply-to", "phrase-in-reply-to", "self-reference"]
    threader = _thread([mails[name] for name in in_order])
    assert threader.parent_of("reply-2@mail.users.example") == "reply-1@mail.users.example"
    assert threader.parent_of("reply-3@mail.users.example") == "root-1@mail.users.example"
    assert threader.parent_of("reply-4@mail.users.example") == "reply-3@mail.users.example"

    late_parent = ["root", "mangled-in-reply-to", "reply"]
    assert _thread([mails[n] for n in late_parent]).parent_of("reply-2@mail.users.example") == (
        "root-1@mail.users.example"
    )
    adopted = _thread([mails[n] for n in late_parent], adopt_nearer_parents=True)
    assert adopted.parent_of("reply-2@mail.users.example") == "reply-1@mail.users.example"
