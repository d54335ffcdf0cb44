"""The line classifier tries a pattern anchored at the start of a line with `match` instead of `search` (it can
only match there, and `search` tries every position of the line in vain). The anchoring check must never call a
pattern anchored that is not, and the two ways must classify every line alike: the project's own mail here and,
where present, every line of the shared corpora."""

from __future__ import annotations

import re
import re._constants as sre_constants
import re._parser as sre_parser
from collections.abc import Iterator
from pathlib import Path

import pytest

from qaflow_mail.mail import quotes
from tests.conftest import CORPORA, FIXTURES


def every_pattern() -> list[re.Pattern[str]]:
    return [quotes._EMPTY_RE, quotes._DELIMITER_RE, quotes._REPLY_ABOVE_RE, quotes._QUOTE_RE,
            *quotes._SIGNATURE_RES, *quotes._EMBEDDED_RES, *quotes._HEADER_RES,
            *(marker.regex for marker in quotes._EMBEDDED_MARKERS)]


def truly_anchored(regex: re.Pattern[str]) -> bool:
    """What the regex compiler itself makes of the pattern: its first item is a start-of-line anchor."""
    parsed = sre_parser.parse(regex.pattern, regex.flags)
    first = next(iter(parsed))
    return first[0] is sre_constants.AT and first[1] in (sre_constants.AT_BEGINNING,
                                                           sre_constants.AT_BEGINNING_LINE)


@pytest.mark.parametrize("pattern, anchored", [
    ("^a|b", False), ("^(a|b)", True), ("^[|]x", True), ("^[]|]x", True), ("^[^]|]x", True), (r"^a\|b", True),
    ("a", False), ("(^a)", False), ("^(?:a)|(?:b)", False), (r"^[\]|]|x", False),
])
def test_the_anchoring_check(pattern: str, anchored: bool) -> None:
    assert quotes.anchored_at_start(pattern) is anchored
    if anchored:
        assert truly_anchored(re.compile(pattern))


def test_no_pattern_of_the_classifier_is_called_anchored_wrongly() -> None:
    called = [regex for regex in every_pattern() if quotes.anchored_at_start(regex.pattern)]
    assert len(called) > len(every_pattern()) // 2  # the check does find the anchored ones
    for regex in called:
        assert truly_anchored(regex), regex.pattern


def lines_under(folder: Path) -> Iterator[str]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = path.read_bytes()[:2_000_000].decode("utf-8", "replace").replace("\r\n", "\n")
        for line in text.split("\n"):
            yield line[:1200]
            yield f"> {line}"[:1200]


def assert_classified_alike(lines: Iterator[str]) -> int:
    seen: set[str] = set()
    for line in lines:
        if line in seen:
            continue
        seen.add(line)
        assert quotes._classify(line, quotes._ONE_LINE) == quotes._classify(line, quotes._ANYWHERE), line
    return len(seen)


def test_match_and_search_classify_the_projects_mail_alike() -> None:
    assert assert_classified_alike(lines_under(FIXTURES)) > 1000


@pytest.mark.skipif(not CORPORA.is_dir(), reason="the shared corpora are not beside this checkout")
def test_match_and_search_classify_every_corpus_line_alike() -> None:
    assert assert_classified_alike(lines_under(CORPORA)) > 100_000
