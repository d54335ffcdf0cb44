"""The forum's lists and the topic page: ``/`` (latest topics), ``/c/<slug>`` (one category) and ``/t/<id>``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast
from urllib.parse import quote

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import ANNOUNCEMENTS_SLUG
from qaflow_mail.mail.compose import clean_header_text
from qaflow_mail.server.web.common import (
    CATEGORIES,
    DEPS,
    LISTINGS,
    STYLESHEET,
    TOPIC_FRESHNESS,
    TOPIC_PAGE_MAX_AGE,
    TOPIC_PAGES,
    TOPICS_PER_PAGE,
    VIEWS,
    WebPage,
    answer_304,
    html_response,
    not_found,
    not_modified,
    page_number,
    render,
    render_html,
    validators,
)
from qaflow_mail.server.web.freshness import UNKNOWN
from qaflow_mail.server.web.page_cache import CachedPage
from qaflow_mail.server.web.post_body import RASTER_TYPES, render_body
from qaflow_mail.services import topics
from qaflow_mail.services.topics import AttachmentInfo, TopicFreshness, TopicView

T = TypeVar("T")


def attachment_path(attachment: AttachmentInfo) -> str:
    return f"/a/{attachment.id}/{quote(attachment.filename, safe='')}"


def reply_subject(subject: str) -> str:
    clean = clean_header_text(subject)
    return clean if clean.lower().startswith("re:") else f"Re: {clean}"


def mailto_reply(address: str, *, in_reply_to: str, subject: str) -> str:
    """RFC 6068: a mailto URL whose message answers ``in_reply_to`` with ``subject``."""
    return (f"mailto:{quote(address, safe='@')}?In-Reply-To={quote(f'<{in_reply_to}>', safe='')}"
            f"&subject={quote(subject, safe='')}")


async def _remembered(request: web.Request, key: tuple[object, ...], read: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """What `read` answers, from memory while nobody has committed since it was read (SQLite), else read now."""
    memo = request.app[LISTINGS]
    recalled = memo.recall(key)
    if recalled.value is not UNKNOWN:
        return cast(T, recalled.value)
    async with request.app[DEPS].sessions() as session:
        value = await read(session)
    memo.remember(recalled, key, value)
    return value


async def index(request: web.Request) -> web.StreamResponse:
    page = page_number(request)

    async def read(session: AsyncSession) -> tuple[Any, Any]:
        return (await topics.latest_topics(session, page=page, per_page=TOPICS_PER_PAGE),
                await request.app[CATEGORIES].get(session))

    listing, categories = await _remembered(request, ("index", page), read)
    if page > 1 and not listing.rows:
        return not_found(request, "page")
    return render(request, WebPage.INDEX, {"listing": listing, "categories": categories, "category": None,
                                          "feed_url": "/latest.atom"})


async def category(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    page = page_number(request)
    slug = request.match_info["slug"]

    async def read(session: AsyncSession) -> tuple[Any, Any, Any]:
        found = await topics.public_category(session, slug)
        if found is None:
            return None, None, None
        return (found, await topics.latest_topics(session, category_id=found.id, page=page, per_page=TOPICS_PER_PAGE),
                await request.app[CATEGORIES].get(session))

    found, listing, categories = await _remembered(request, ("category", slug, page), read)
    if found is None:
        return not_found(request, "category")
    if page > 1 and not listing.rows:
        return not_found(request, "page")
    return render(request, WebPage.CATEGORY, {
        "listing": listing, "categories": categories, "category": found,
        "post_address": f"{found.slug}@{deps.settings.site.domain}",
        "open_for_posts": found.slug != ANNOUNCEMENTS_SLUG, "feed_url": f"/c/{found.slug}.atom",
    })


def _topic_id(request: web.Request) -> int | None:
    raw = request.match_info["id"]
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


def _count_view(request: web.Request, topic_id: int) -> None:
    if request.method == "GET":
        visitor = request.remote or ""
        request.app[VIEWS].seen(topic_id, visitor, request.headers.get("User-Agent", ""))


def _post_context(view: TopicView) -> list[dict[str, Any]]:
    posts: list[dict[str, Any]] = []
    by_id = {post.id: post for post in view.posts}
    previous_id: int | None = None
    for number, post in enumerate(view.posts, start=1):
        body = render_body(post.body_html, post.body_text, post.attachments, attachment_path)
        parent = by_id.get(post.parent_id) if post.parent_id is not None else None
        posts.append({
            "id": post.id,
            "number": number,
            "author": post.author,
            "created_at": post.created_at,
            "body": body.html,
            "answers": parent if parent is not None and post.parent_id != previous_id and number > 1 else None,
            "attachments": [
                {"name": att.filename, "size": att.size, "url": attachment_path(att), "type": att.content_type,
                 "image": att.content_type in RASTER_TYPES, "shown": att.id in body.cited}
                for att in post.attachments
            ],
        })
        previous_id = post.id
    return posts


async def _freshness(request: web.Request, topic_id: int) -> TopicFreshness | None:
    """The topic's freshness: remembered on this node until anyone commits (SQLite), else read in one query."""
    memo = request.app[TOPIC_FRESHNESS]
    recalled = memo.recall(topic_id)
    if recalled.value is not UNKNOWN:
        return recalled.value
    async with request.app[DEPS].sessions() as session:
        fresh = await topics.topic_freshness(session, topic_id)
    memo.remember(recalled, topic_id, fresh)
    return fresh


async def topic(request: web.Request) -> web.StreamResponse:
    """The topic page: its freshness says whether the page in memory is still the page; else it is rendered."""
    deps = request.app[DEPS]
    topic_id = _topic_id(request)
    if topic_id is None:
        return not_found(request, "topic")
    fresh = await _freshness(request, topic_id)
    if fresh is None:
        return not_found(request, "topic")
    stamp = validators(fresh.last_post_at, fresh.key, request.app[STYLESHEET].name)
    _count_view(request, topic_id)
    if not_modified(request, stamp):
        return answer_304(stamp)
    pages = request.app[TOPIC_PAGES]
    cached = pages.get(topic_id, fresh.key, deps.clock())
    if cached is not None:
        return html_response(cached, headers=stamp)
    async with deps.sessions() as session:
        view = await topics.topic_with_posts(session, topic_id)
        if view is None or not view.posts:
            return not_found(request, "topic")
        reply_ids = await topics.reply_message_ids(session, deps.settings, [view.posts[-1].id])
        await session.commit()
    address = f"{view.category.slug}@{deps.settings.site.domain}"
    subject = reply_subject(view.subject)
    in_reply_to = reply_ids[view.posts[-1].id]
    open_for_replies = view.category.slug != ANNOUNCEMENTS_SLUG
    rendered = render_html(request, WebPage.TOPIC, {
        "topic": view,
        "category": view.category,
        "posts": _post_context(view),
        "reply": {"open": open_for_replies, "address": address, "subject": subject, "in_reply_to": in_reply_to,
                  "mailto": mailto_reply(address, in_reply_to=in_reply_to, subject=subject)},
        "feed_url": f"/t/{view.id}.atom",
        "mbox_url": f"/t/{view.id}.mbox",
    }, max_age=TOPIC_PAGE_MAX_AGE)
    body = rendered.html.encode()
    pages.put(topic_id, CachedPage(key=fresh.key, body=body, valid_until=rendered.valid_until))
    return html_response(body, headers=stamp)
