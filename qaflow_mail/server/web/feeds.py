"""Atom 1.0 feeds (RFC 4287) of the newest public posts: ``/latest.atom``, ``/c/<slug>.atom``, ``/t/<id>.atom``.

Built with ElementTree, so every value is escaped as XML; post HTML goes in as escaped ``type="html"`` content
after the same treatment as on the pages (addresses masked, ``cid:`` images pointed at their attachments).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime

from aiohttp import web

from qaflow_mail.server.web.common import DEPS, not_found
from qaflow_mail.server.web.post_body import render_body
from qaflow_mail.server.web.topics import reply_subject
from qaflow_mail.services import topics
from qaflow_mail.services.topics import FeedEntry

ATOM_NS = "http://www.w3.org/2005/Atom"
FEED_SIZE = 30
ATOM_TYPE = "application/atom+xml"


def _text(parent: ET.Element, tag: str, value: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = value
    return element


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _tag_uri(base_url: str, kind: str, ident: int) -> str:
    host = base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0] or "localhost"
    return f"tag:{host},2024:{kind}-{ident}"


def atom(*, base_url: str, title: str, self_path: str, page_path: str, entries: list[FeedEntry],
         updated: datetime) -> bytes:
    """The feed document (pure)."""
    feed = ET.Element("feed", {"xmlns": ATOM_NS})
    _text(feed, "title", title)
    _text(feed, "id", base_url + self_path)
    ET.SubElement(feed, "link", {"rel": "self", "type": ATOM_TYPE, "href": base_url + self_path})
    ET.SubElement(feed, "link", {"rel": "alternate", "type": "text/html", "href": base_url + page_path})
    _text(feed, "updated", _stamp(entries[0].created_at if entries else updated))
    _text(feed, "generator", "QAFlow Mail")
    for entry in entries:
        item = ET.SubElement(feed, "entry")
        _text(item, "title", entry.topic_subject if entry.is_first else reply_subject(entry.topic_subject))
        _text(item, "id", _tag_uri(base_url, "post", entry.post_id))
        ET.SubElement(item, "link", {"rel": "alternate", "type": "text/html",
                                     "href": f"{base_url}/t/{entry.topic_id}#p{entry.post_id}"})
        _text(item, "published", _stamp(entry.created_at))
        _text(item, "updated", _stamp(entry.created_at))
        author = ET.SubElement(item, "author")
        _text(author, "name", entry.author)
        body = render_body(entry.body_html, entry.body_text, [], lambda _att: "")
        _text(item, "content", str(body.html), type="html")
    document: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return document


def _response(request: web.Request, document: bytes) -> web.Response:
    response = web.Response(body=document, content_type=ATOM_TYPE, charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
    return response


async def latest(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    async with deps.sessions() as session:
        entries = await topics.latest_posts(session, limit=FEED_SIZE)
    site = deps.settings.site
    return _response(request, atom(base_url=site.base_url.rstrip("/"), title=site.name, self_path="/latest.atom",
                                   page_path="/", entries=entries, updated=deps.clock()))


async def category(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    async with deps.sessions() as session:
        found = await topics.public_category(session, request.match_info["slug"])
        if found is None:
            return not_found(request, "category")
        entries = await topics.latest_posts(session, category_id=found.id, limit=FEED_SIZE)
    site = deps.settings.site
    return _response(request, atom(base_url=site.base_url.rstrip("/"), title=f"{found.name} · {site.name}",
                                   self_path=f"/c/{found.slug}.atom", page_path=f"/c/{found.slug}",
                                   entries=entries, updated=deps.clock()))


async def topic(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        return not_found(request, "topic")
    async with deps.sessions() as session:
        summary = await topics.topic_summary(session, int(raw))
        if summary is None:
            return not_found(request, "topic")
        found, _category = summary
        entries = await topics.latest_posts(session, topic_id=found.id, limit=FEED_SIZE)
    site = deps.settings.site
    return _response(request, atom(base_url=site.base_url.rstrip("/"), title=f"{found.subject} · {site.name}",
                                   self_path=f"/t/{found.id}.atom", page_path=f"/t/{found.id}", entries=entries,
                                   updated=deps.clock()))
