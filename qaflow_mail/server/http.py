"""The web side: the forum's pages (``server/web``), one-click unsubscribe (RFC 8058) and a health check.

- ``GET /unsubscribe/{token}`` shows a confirm page and changes nothing (link scanners only GET).
- ``POST /unsubscribe/{token}`` turns the subscription off: no login, no cookies, any body (mail providers send
  ``List-Unsubscribe=One-Click``; the confirm page's form sends the same). Repeating it is harmless.
- A bad or tampered token gets 400 with a page that says what to do.
- ``GET /healthz`` (the database answers) and ``GET /metrics`` (Prometheus): ``server.ops_routes``.
- Everything else is the forum on the web, mounted by ``server.web.add_routes``.

Pages come from ``templates/web/`` with autoescaping. Tokens never reach the logs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from qaflow_mail.deps import Deps
from qaflow_mail.outbound.render import PageTemplate
from qaflow_mail.server.ops_routes import register_ops_routes, request_timing
from qaflow_mail.server.web import add_routes, friendly_errors
from qaflow_mail.server.web.common import DEPS
from qaflow_mail.services.subscriptions import (
    UnsubscribeResult,
    UnsubscribeStatus,
    check_unsubscribe_token,
    mask_email,
    unsubscribe_by_token,
)
from qaflow_mail.urls import category_url

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # a one-click body is one short form field

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _site(request: web.Request) -> dict[str, str]:
    settings = request.app[DEPS].settings
    return {"name": settings.site.name, "base_url": settings.site.base_url}


def _page(request: web.Request, template: PageTemplate, context: dict[str, Any], *, status: int = 200) -> web.Response:
    html = request.app[DEPS].renderer.render_page(template, {"site": _site(request), **context})
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _category(result: UnsubscribeResult) -> dict[str, str] | None:
    if result.category_slug is None or result.category_name is None:
        return None
    return {"name": result.category_name, "slug": result.category_slug}


def _error_page(request: web.Request, result: UnsubscribeResult) -> web.Response:
    log.info("http.unsubscribe_refused status=%s detail=%s", result.status, result.detail)
    reason = "expired" if result.status is UnsubscribeStatus.EXPIRED else "invalid"
    return _page(request, PageTemplate.UNSUBSCRIBE_ERROR, {"reason": reason}, status=400)


def _resubscribe_url(request: web.Request, result: UnsubscribeResult) -> str:
    settings = request.app[DEPS].settings
    # The announcements, a whole digest and a private category have no page of their own.
    if result.category_slug is None or result.digest_mode is not None or result.category_private:
        return settings.site.base_url
    return category_url(settings, result.category_slug)


async def unsubscribe_page(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    async with deps.sessions() as session:
        result = await check_unsubscribe_token(session, request.match_info["token"], deps.settings, deps.clock())
    if not result.ok:
        return _error_page(request, result)
    return _page(
        request,
        PageTemplate.UNSUBSCRIBE_CONFIRM,
        {"category": _category(result), "email": mask_email(result.email or ""), "action_url": request.path},
    )


async def unsubscribe_one_click(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    await request.read()  # whatever the body says (RFC 8058: List-Unsubscribe=One-Click), the POST is the request
    async with deps.sessions() as session, session.begin():
        result = await unsubscribe_by_token(session, request.match_info["token"], deps.settings, deps.clock())
    if not result.ok:
        return _error_page(request, result)
    log.info("http.unsubscribed user_id=%s category_id=%s status=%s", result.user_id, result.category_id,
             result.status)
    return _page(
        request,
        PageTemplate.UNSUBSCRIBE_DONE,
        {"category": _category(result), "email": mask_email(result.email or ""),
         "resubscribe_url": _resubscribe_url(request, result)},
    )


def build_app(deps: Deps) -> web.Application:
    app = web.Application(middlewares=[request_timing, security_headers, friendly_errors], client_max_size=MAX_BODY)
    app[DEPS] = deps
    app.router.add_get("/unsubscribe/{token}", unsubscribe_page)
    app.router.add_post("/unsubscribe/{token}", unsubscribe_one_click)
    register_ops_routes(app)  # /healthz, /metrics
    add_routes(app)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def http_server(deps: Deps) -> AsyncIterator[int]:
    """Serve the web endpoints on ``[http] host, port`` until exit; yields the bound port (useful with port 0)."""
    settings = deps.settings
    runner = web.AppRunner(build_app(deps), access_log=None)  # the access log would hold tokens
    await runner.setup()
    try:
        sock = _bind(settings.http.host, settings.http.port)
        site = web.SockSite(runner, sock)
        await site.start()
        port = int(sock.getsockname()[1])
        log.info("http.listening host=%s port=%s", settings.http.host, port)
        yield port
    finally:
        await runner.cleanup()
