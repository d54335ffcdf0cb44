"""The forum on the web: server-rendered pages (no JavaScript), feeds, search, attachments and the mbox export.

One module per page group; ``add_routes`` mounts them on the gateway's aiohttp application.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import monotonic

from aiohttp import web

from qaflow_mail.server.web import attachments, feeds, mbox, posts, search, site, topics
from qaflow_mail.server.web.common import (
    CATEGORIES,
    DEPS,
    LISTINGS,
    STYLESHEET,
    TOPIC_FRESHNESS,
    TOPIC_PAGES,
    VIEWS,
    CategoryList,
    Stylesheet,
)
from qaflow_mail.server.web.confirm import add_confirm_routes
from qaflow_mail.server.web.follow import add_follow_routes
from qaflow_mail.server.web.freshness import MAX_LISTINGS, MAX_TOPICS, CommitWatch, FreshnessMemo, ListingMemo
from qaflow_mail.server.web.page_cache import PageCache
from qaflow_mail.server.web.views import ViewCounter, flushing
from qaflow_mail.services.topics import add_views

__all__ = ["add_routes", "friendly_errors"]

friendly_errors = site.friendly_errors


async def _count_views(app: web.Application) -> AsyncIterator[None]:
    deps = app[DEPS]

    async def write(counts: dict[int, int]) -> None:
        async with deps.sessions() as session, session.begin():
            await add_views(session, counts)

    async with flushing(app[VIEWS], write, deps.settings.http.views_flush_seconds):
        yield


async def _close_freshness(app: web.Application) -> AsyncIterator[None]:
    yield
    app[TOPIC_FRESHNESS].close()
    app[LISTINGS].close()


def add_routes(app: web.Application) -> None:
    """Mount the forum's pages; ``app[DEPS]`` must be set."""
    app[STYLESHEET] = Stylesheet.load()
    app[VIEWS] = ViewCounter(monotonic)
    app[CATEGORIES] = CategoryList()
    app[TOPIC_PAGES] = PageCache()
    watch = CommitWatch.for_url(app[DEPS].settings.database.url)
    app[TOPIC_FRESHNESS] = FreshnessMemo(watch, MAX_TOPICS)
    app[LISTINGS] = ListingMemo(watch, MAX_LISTINGS)
    app.cleanup_ctx.append(_count_views)
    app.cleanup_ctx.append(_close_freshness)
    router = app.router
    router.add_get("/", topics.index)
    router.add_get("/latest.atom", feeds.latest)
    router.add_get(r"/c/{slug:[a-z0-9-]+}.atom", feeds.category)
    router.add_get(r"/c/{slug:[A-Za-z0-9-]+}", topics.category)
    router.add_get(r"/t/{id:\d+}.atom", feeds.topic)
    router.add_get(r"/t/{id:\d+}.mbox", mbox.mbox)
    router.add_get(r"/t/{id:\d+}", topics.topic)
    router.add_get(r"/p/{id:\d+}", posts.post)
    router.add_get(r"/m/{message_id:.+}", posts.by_message_id)
    router.add_get(r"/a/{id:\d+}/{filename}", attachments.attachment)
    router.add_get("/search", search.search)
    router.add_get("/robots.txt", site.robots)
    router.add_get(r"/static/{name}", site.stylesheet)
    add_confirm_routes(app)  # /confirm/<token>: a join or leave's confirmation link
    add_follow_routes(app)  # POST /c/<slug>/follow: "Follow by email"
