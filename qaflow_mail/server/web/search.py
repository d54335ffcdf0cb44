"""``/search?q=…[&order=newest][&page=N]``: full-text search of public posts, matched words highlighted."""

from __future__ import annotations

from aiohttp import web

from qaflow_mail.server.web.common import DEPS, WebPage, page_number, render
from qaflow_mail.services.search import SearchOrder, SearchResults, search_posts

MAX_TYPED_CHARS = 500


async def search(request: web.Request) -> web.StreamResponse:
    typed = request.query.get("q", "")[:MAX_TYPED_CHARS]
    order = SearchOrder.NEWEST if request.query.get("order") == SearchOrder.NEWEST else SearchOrder.BEST
    page = page_number(request)
    if typed.strip():
        async with request.app[DEPS].sessions() as session:
            results = await search_posts(session, typed, order=order, page=page)
    else:
        results = SearchResults(query=typed, hits=[], page=page, has_next=False)
    return render(request, WebPage.SEARCH, {"results": results, "order": order.value, "category": None,
                                           "feed_url": "/latest.atom"})
