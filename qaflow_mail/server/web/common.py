"""What the forum's page handlers share: the app keys, the page names, rendering with the site context, times as
people read them, paging, conditional GET and the response headers of a public page."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from time import monotonic
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.deps import Deps
from qaflow_mail.outbound.render import TEMPLATES_DIR
from qaflow_mail.server.web.freshness import FreshnessMemo, ListingMemo
from qaflow_mail.server.web.page_cache import PageCache
from qaflow_mail.server.web.views import ViewCounter
from qaflow_mail.services.topics import CategoryInfo, forum_state, public_category_names, topic_counts

DEPS = web.AppKey("deps", Deps)
VIEWS = web.AppKey("views", ViewCounter)

MAX_PAGE = 10_000
TOPICS_PER_PAGE = 30

# No script at all: nothing may run, load from elsewhere, frame the page or be framed.
PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "Cache-Control": "no-cache",  # revalidate: ETag and Last-Modified make that cheap
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class WebPage(StrEnum):
    """The forum's pages under templates/web/ (public, indexable: unlike the unsubscribe pages)."""

    INDEX = "web/index"
    CATEGORY = "web/category"
    TOPIC = "web/topic"
    SEARCH = "web/search"
    NOT_FOUND = "web/not_found"


STATIC_DIR = TEMPLATES_DIR / "web" / "static"


@dataclass(frozen=True, slots=True)
class Stylesheet:
    """The one stylesheet, served under a name that changes with its content (cached for a year)."""

    body: bytes
    name: str

    @classmethod
    def load(cls, path: Path = STATIC_DIR / "style.css") -> Stylesheet:
        body = path.read_bytes()
        return cls(body=body, name=f"style.{hashlib.sha256(body).hexdigest()[:10]}.css")

    @property
    def url(self) -> str:
        return f"/static/{self.name}"


STYLESHEET = web.AppKey("stylesheet", Stylesheet)


@dataclass(slots=True)
class CategoryList:
    """The category list with topic counts beside every list page. Which categories are listed (and their names)
    is read on every request, so a category turned private disappears at once; the counts (the costly part of
    ``/``) are reused while the forum's state fingerprint (``services.topics.forum_state``) is unchanged, and for
    at most ``ttl`` seconds even then (a topic moved or deleted changes no fingerprint)."""

    ttl: float = 60.0
    counts: dict[int, int] | None = None
    state: tuple[object, ...] = ()
    expires: float = 0.0

    async def get(self, session: AsyncSession) -> list[CategoryInfo]:
        now = monotonic()
        state = await forum_state(session)
        if self.counts is None or state != self.state or now >= self.expires:
            self.counts, self.state, self.expires = await topic_counts(session), state, now + self.ttl
        counts = self.counts
        return [CategoryInfo(id=c.id, slug=c.slug, name=c.name, topic_count=counts.get(c.id, 0))
                for c in await public_category_names(session)]


CATEGORIES = web.AppKey("categories", CategoryList)
TOPIC_PAGES = web.AppKey("topic_pages", PageCache)
TOPIC_FRESHNESS = web.AppKey("topic_freshness", FreshnessMemo)
LISTINGS = web.AppKey("listings", ListingMemo)
# Bounds the age of what a topic page shows but its freshness key leaves out: the author card's post count.
TOPIC_PAGE_MAX_AGE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class When:
    """A moment as a page shows it: machine-readable, absolute and relative."""

    iso: str
    absolute: str
    ago: str


def when(moment: datetime, now: datetime) -> When:
    moment = moment.astimezone(UTC)
    return When(iso=moment.isoformat(timespec="seconds"), absolute=moment.strftime("%Y-%m-%d %H:%M UTC"),
                ago=relative(moment, now))


_UNITS = ((365 * 86400, "year"), (30 * 86400, "month"), (7 * 86400, "week"), (86400, "day"), (3600, "hour"),
          (60, "minute"))


def relative(moment: datetime, now: datetime) -> str:
    """'just now', '5 minutes ago', '4 days ago', '2 years ago'."""
    seconds = int((now - moment).total_seconds())
    for size, unit in _UNITS:
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"


def relative_changes_at(moment: datetime, now: datetime) -> datetime:
    """The first moment after ``now`` at which ``relative(moment, ·)`` reads differently."""
    seconds = max(int((now - moment).total_seconds()), 0)
    boundaries = [size for size, _unit in _UNITS if size > seconds]  # a larger unit taking over
    for size, _unit in _UNITS:
        if seconds >= size:
            boundaries.append((seconds // size + 1) * size)  # the count of the current unit going up
            break
    return moment + timedelta(seconds=min(boundaries)) if boundaries else now + timedelta(days=365)


class Moments:
    """``when`` for one rendering, remembering until when every relative time it produced stays true."""

    def __init__(self, now: datetime, horizon: datetime) -> None:
        self.now = now
        self.valid_until = horizon

    def __call__(self, moment: datetime) -> When:
        self.valid_until = min(self.valid_until, relative_changes_at(moment, self.now))
        return when(moment, self.now)


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB"):
        if value < 1024 or unit == "MB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def page_number(request: web.Request) -> int:
    """?page=N, 1 when absent or not a sensible number."""
    raw = request.query.get("page", "1")
    return min(max(int(raw), 1), MAX_PAGE) if raw.isdigit() and len(raw) < 7 else 1


def site_context(request: web.Request) -> dict[str, Any]:
    deps = request.app[DEPS]
    site = deps.settings.site
    return {
        "name": site.name,
        "base_url": site.base_url.rstrip("/"),
        "tagline": site.tagline,
        "domain": site.domain,
        "stylesheet": request.app[STYLESHEET].url,
    }


@dataclass(frozen=True, slots=True)
class Rendered:
    html: str
    valid_until: datetime  # when a relative time on the page ("5 minutes ago") would read differently


def render_html(request: web.Request, page: WebPage, context: Mapping[str, Any], *,
                max_age: timedelta = timedelta(days=365)) -> Rendered:
    deps = request.app[DEPS]
    now = deps.clock()
    moments = Moments(now, now + max_age)
    values = {"site": site_context(request), "when": moments, "size_text": size_text,
              "feed_url": "/latest.atom", "category": None,
              **context}
    html = deps.renderer.render_page(page, values)
    return Rendered(html=html, valid_until=moments.valid_until)


def html_response(body: str | bytes, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    response = (web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
                if isinstance(body, str) else
                web.Response(body=body, status=status, content_type="text/html", charset="utf-8"))
    response.headers.update(PAGE_HEADERS)
    if headers:
        response.headers.update(headers)
    return response


def render(request: web.Request, page: WebPage, context: Mapping[str, Any], *, status: int = 200,
           headers: Mapping[str, str] | None = None) -> web.Response:
    return html_response(render_html(request, page, context).html, status=status, headers=headers)


def not_found(request: web.Request, what: str = "page") -> web.Response:
    return render(request, WebPage.NOT_FOUND, {"what": what}, status=404)


def validators(last_modified: datetime, *parts: object) -> dict[str, str]:
    """ETag and Last-Modified for a page that changes when ``last_modified`` or ``parts`` do."""
    seed = "\x00".join([last_modified.isoformat(), *map(str, parts)])
    return {"ETag": f'W/"{hashlib.sha256(seed.encode()).hexdigest()[:20]}"',
            "Last-Modified": format_datetime(last_modified.astimezone(UTC).replace(microsecond=0), usegmt=True)}


def not_modified(request: web.Request, headers: Mapping[str, str]) -> bool:
    """Whether the client's copy is current (If-None-Match wins over If-Modified-Since, RFC 9110 13.2.2)."""
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {tag.strip() for tag in if_none_match.split(",")}
        etag = headers["ETag"]
        return "*" in tags or etag in tags or etag.removeprefix("W/") in tags
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        client = parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError):
        return False
    if client.tzinfo is None:
        client = client.replace(tzinfo=UTC)
    return parsedate_to_datetime(headers["Last-Modified"]) <= client


def answer_304(headers: Mapping[str, str]) -> web.Response:
    response = web.Response(status=304)
    response.headers.update(PAGE_HEADERS)
    response.headers.update(headers)
    return response


Handler = Callable[[web.Request], Any]
