"""Rendered topic pages kept in memory, each under the freshness key it was rendered for.

A page is served from here only while the key read from the database for this request equals the one it was
stored with (so another node's write, a moderation decision or a category turned private is seen at once), and
only until the first relative time on it ("5 minutes ago") would read differently. Least recently used pages go
first when the cache is full.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

MAX_PAGES = 512


@dataclass(frozen=True, slots=True)
class CachedPage:
    key: str
    body: bytes
    valid_until: datetime


class PageCache:
    def __init__(self, max_pages: int = MAX_PAGES) -> None:
        self._pages: OrderedDict[int, CachedPage] = OrderedDict()
        self._max_pages = max_pages

    def get(self, page_id: int, key: str, now: datetime) -> bytes | None:
        cached = self._pages.get(page_id)
        if cached is None or cached.key != key or now >= cached.valid_until:
            return None
        self._pages.move_to_end(page_id)
        return cached.body

    def put(self, page_id: int, page: CachedPage) -> None:
        self._pages[page_id] = page
        self._pages.move_to_end(page_id)
        while len(self._pages) > self._max_pages:
            self._pages.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pages)
