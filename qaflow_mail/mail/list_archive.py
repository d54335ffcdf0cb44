"""What list archives do to headers, undone for an import: pipermail's obfuscated addresses and list tags in
subjects. Pure.

Pipermail (Mailman 2) writes `From: goran at example.com (Goran Name)` in its public mbox; some archives spell
the dots too (`goran at example dot com`). Lists prefix subjects with a tag naming the list (`[users@httpd]`,
`[Foo-devel]`); a forum category is the list, so the tag says nothing there.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

__all__ = ["deobfuscated_sender", "list_tags", "strip_subject_tags", "subject_tag"]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_OBFUSCATED = rf"([A-Za-z0-9._%+-]{{1,64}})\s+at\s+({_LABEL}(?:(?:\s*\.\s*|\s+dot\s+){_LABEL}){{1,10}})"
# "goran at example.com (Goran Name)", "Goran Name <goran at example.com>", "goran at example dot com"
_ADDRESS_THEN_NAME_RE = re.compile(rf"^\s*\"?{_OBFUSCATED}\"?\s*(?:\(([^()]{{0,200}})\))?\s*$", re.IGNORECASE)
_NAME_THEN_ADDRESS_RE = re.compile(rf"^\s*\"?([^<>\"]{{0,200}}?)\"?\s*<\s*{_OBFUSCATED}\s*>\s*$", re.IGNORECASE)
_DOT_RE = re.compile(r"\s*\.\s*|\s+dot\s+", re.IGNORECASE)

# A subject's leading reply/forward prefixes, then a bracketed tag.
_PREFIXES = r"(?:(?:re|fwd?|aw|wg|sv|antw|tr|rv)\s*(?:\[[0-9]{1,3}\])?\s*:\s*)*"
_LEADING_TAG_RE = re.compile(rf"^\s*{_PREFIXES}\[([^\[\]\n]{{1,60}})\]", re.IGNORECASE)
_WORD_RE = re.compile(r"[a-z0-9]+")
_LIST_ID_RE = re.compile(r"<([^<>\s]{1,250})>")
_MIN_SHARE = 0.3  # the most common tag names the list when at least this share of the archive carries it


def deobfuscated_sender(value: str) -> tuple[str, str] | None:
    """(display name, address) from an obfuscated From value, or None when it is not one."""
    match = _ADDRESS_THEN_NAME_RE.match(value)
    if match is not None:
        local, domain, name = match.group(1), match.group(2), match.group(3) or ""
    else:
        match = _NAME_THEN_ADDRESS_RE.match(value)
        if match is None:
            return None
        name, local, domain = match.group(1), match.group(2), match.group(3)
    domain = _DOT_RE.sub(".", domain)
    return name.strip(), f"{local}@{domain}".lower()


def subject_tag(subject: str) -> str | None:
    """The bracketed tag at the start of a subject (after any "Re:"), or None."""
    match = _LEADING_TAG_RE.match(subject or "")
    return match.group(1).strip() if match else None


def _words(text: str) -> set[str]:
    return set(_WORD_RE.findall(text.lower()))


def _names_the_list(tag: str, list_ids: Iterable[str]) -> bool:
    """True when every word of the tag is a word of a List-Id ("users@httpd" and <users.httpd.apache.org>)."""
    words = _words(tag)
    for list_id in list_ids:
        match = _LIST_ID_RE.search(list_id)
        label = match.group(1) if match else list_id
        if words and words <= _words(label):
            return True
    return False


def list_tags(tags: Iterable[str | None], list_ids: Iterable[str | None]) -> frozenset[str]:
    """The subject tags of an archive that name its list: those a List-Id names, else the most common tag when
    enough of the archive carries it."""
    all_tags = list(tags)
    counted = Counter(tag for tag in all_tags if tag)
    known_ids = [list_id for list_id in list_ids if list_id]
    if known_ids:
        named = frozenset(tag for tag in counted if _names_the_list(tag, known_ids))
        if named:
            return named
    if not counted:
        return frozenset()
    tag, count = counted.most_common(1)[0]
    return frozenset({tag}) if count >= 2 and count >= _MIN_SHARE * len(all_tags) else frozenset()


def strip_subject_tags(subject: str, tags: frozenset[str]) -> str:
    """The subject without its leading tag when that tag is one of `tags` ("Re: [users@httpd] x" → "Re: x")."""
    match = _LEADING_TAG_RE.match(subject or "")
    if match is None or match.group(1).strip() not in tags:
        return subject
    head = subject[: match.start(1) - 1]
    tail = subject[match.end() :].lstrip()
    return f"{head}{tail}".strip() or subject
