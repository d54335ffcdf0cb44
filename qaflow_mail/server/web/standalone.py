"""The standalone pages (a confirmation link's, a "Follow by email" form's answer): private to whoever holds the
link or sent the form, so noindex and never cached; the app's security headers (no-store, no-referrer, a CSP that
allows their inline style and no script) apply to them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from qaflow_mail.outbound.render import PageTemplate
from qaflow_mail.server.web.common import DEPS


def standalone_page(request: web.Request, template: PageTemplate, context: Mapping[str, Any], *,
                    status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    deps = request.app[DEPS]
    site = {"name": deps.settings.site.name, "base_url": deps.settings.site.base_url}
    html = deps.renderer.render_page(template, {"site": site, **context})
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers=headers)
