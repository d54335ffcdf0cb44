"""Site-wide bits: ``/robots.txt``, the stylesheet, and the 404 page for any path nothing else answers."""

from __future__ import annotations

from aiohttp import web

from qaflow_mail.server.web.common import STYLESHEET, Handler, not_found

ROBOTS = """User-agent: *
Disallow: /a/
Disallow: /m/
Disallow: /search
Disallow: /unsubscribe/
Disallow: /confirm/
Allow: /
"""


async def robots(request: web.Request) -> web.StreamResponse:
    return web.Response(text=ROBOTS, content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "public, max-age=86400"})


async def stylesheet(request: web.Request) -> web.StreamResponse:
    sheet = request.app[STYLESHEET]
    if request.match_info["name"] != sheet.name:
        return not_found(request, "file")
    return web.Response(body=sheet.body, content_type="text/css", charset="utf-8",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


@web.middleware
async def friendly_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths and methods answer with the site's 404 page rather than aiohttp's bare text."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPNotFound:
        return not_found(request)
    return response
