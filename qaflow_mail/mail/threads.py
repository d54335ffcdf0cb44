"""Which post an inbound mail replies to: a verified reply token, else In-Reply-To, else References. Pure.

The caller looks every candidate id up in one query (posts.message_id and message_refs) and passes the ids it
found; `resolve_parent` then picks the nearest one. Junk ids (`<yes>`, ids without '@', absurdly long ids, the
message's own id) never become candidates, so they cannot glue unrelated topics together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

# parse.message_ids already drops ids longer than this; an id this long is not something a mail client minted.
MAX_MESSAGE_ID_LENGTH = 250

# What can sit between the brackets of a msg-id: no whitespace, control characters or brackets (UTF-8 is allowed,
# RFC 6532).
_ID_CHARS_RE = re.compile(r"[^\s<>\x00-\x1f\x7f]+")


class ThreadVia(StrEnum):
    TOKEN = "token"
    IN_REPLY_TO = "in_reply_to"
    REFERENCES = "references"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ThreadChoice:
    parent_post_id: int | None
    via: ThreadVia
    matched_id: str | None  # the Message-ID that named the parent; None for a token or a new topic


NEW_TOPIC = ThreadChoice(parent_post_id=None, via=ThreadVia.NONE, matched_id=None)


def is_plausible_message_id(mid: str) -> bool:
    """True when `mid` (normalised, without <>) could be a real Message-ID: `left@right`, no spaces or brackets."""
    if not mid or len(mid) > MAX_MESSAGE_ID_LENGTH or not _ID_CHARS_RE.fullmatch(mid):
        return False
    # rpartition: Outlook ids such as `0198...$@yang@example.com` carry '@' in the left part too.
    left, at, right = mid.rpartition("@")
    return bool(at and left and right)


def parent_candidates(*, message_id: str, in_reply_to: Sequence[str], references: Sequence[str]) -> tuple[str, ...]:
    """Ids to look up, nearest ancestor first: In-Reply-To, then References from last to first.

    Junk ids and the message's own id are dropped, and each id appears once.
    """
    ordered: dict[str, None] = {}
    for mid in (*in_reply_to, *reversed(references)):
        if mid != message_id and is_plausible_message_id(mid):
            ordered.setdefault(mid, None)
    return tuple(ordered)


def resolve_parent(
    *,
    token_post_id: int | None,
    candidates: Sequence[str],
    lookup: Mapping[str, int],
    in_reply_to: Sequence[str] = (),
) -> ThreadChoice:
    """The parent post: the token's post, else the first candidate found in `lookup`, else a new topic.

    `lookup` maps the known Message-IDs among `candidates` (our posts' and the ids of our outgoing mail) to post
    ids. `in_reply_to` only labels the choice: a match among those ids is reported as `ThreadVia.IN_REPLY_TO`.
    """
    if token_post_id is not None:
        return ThreadChoice(parent_post_id=token_post_id, via=ThreadVia.TOKEN, matched_id=None)
    for mid in candidates:
        post_id = lookup.get(mid)
        if post_id is not None:
            via = ThreadVia.IN_REPLY_TO if mid in in_reply_to else ThreadVia.REFERENCES
            return ThreadChoice(parent_post_id=post_id, via=via, matched_id=mid)
    return NEW_TOPIC


def shared_missing_ancestor(candidates: Sequence[str], waiting_topics: Mapping[str, int]) -> tuple[str, int] | None:
    """(id, topic) of the nearest missing ancestor that posts already stored also wait for, or None.

    JWZ threading's empty containers, as notmuch does it: replies whose parent never arrived (a GitHub
    notification answering a root that was never mailed, two answers to a patch not in the archive) belong together
    when they name the same missing id. `waiting_topics` maps the ids stored posts still wait for to their topic;
    `candidates` are `parent_candidates`, so junk ids (`<yes>`) never join anything, and a subject never does.
    """
    for mid in candidates:
        topic = waiting_topics.get(mid)
        if topic is not None:
            return mid, topic
    return None


# One reply/forward marker: "Re:", "RE[2]:", "Re(3):", "Re^2:", "AW:", "Fwd:", "回复：", … then spaces.
_MARKERS = (
    "re|aw|sv|vs|antw|antwort|odp|odg|ynt|vá|rif|r|res|rv|atb|vl|"
    "fw|fwd|wg|tr|doorst|enc|pd|vb|fs|továbbítás|ilt|"
    "απ|σχετ|πρθ|ответ|отв|пер|пересл|השב|הועבר|رد|回复|回覆|答复|答覆|转发|轉寄|轉發"
)
_PREFIX_RE = re.compile(
    rf"^\s*(?:(?:{_MARKERS})\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]|\[[^\[\]]*\])\s*",
    re.IGNORECASE,
)
_WHITESPACE_RE = re.compile(r"\s+")


def subject_key(subject: str) -> str:
    """The subject without reply/forward markers and leading [list-tags], whitespace-normalised and casefolded.

    For reports and display grouping; topics are never joined by subject.
    """
    text = subject
    while True:
        stripped = _PREFIX_RE.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return _WHITESPACE_RE.sub(" ", text).strip().casefold()
