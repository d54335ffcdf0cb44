"""Health and metrics for the outside: ``GET /healthz`` (the database answers) and ``GET /metrics`` (Prometheus).

- ``/healthz``: 200 "ok" when a trivial query returns within HEALTH_TIMEOUT seconds, else 503 with the reason's
  kind (never the database URL or its error text, which may name hosts and users).
- ``/metrics``: the figures of ``services.metrics`` in the Prometheus text format, read from the database at each
  scrape; 503 when the database does not answer.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from qaflow_mail.server.web.common import DEPS
from qaflow_mail.services.metrics import CONTENT_TYPE, database_ok, prometheus_text, snapshot

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 5.0
METRICS_TIMEOUT = 30.0


async def healthz(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            async with deps.sessions() as session:
                await database_ok(session)
    except Exception as exc:  # any failure means unhealthy; the kind is enough for a load balancer
        log.warning("http.healthz_failed error=%s", type(exc).__name__)
        return web.Response(text=f"database unavailable ({type(exc).__name__})\n", status=503,
                            content_type="text/plain")
    return web.Response(text="ok\n", content_type="text/plain")


async def metrics(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    try:
        async with asyncio.timeout(METRICS_TIMEOUT):
            async with deps.sessions() as session:
                body = prometheus_text(await snapshot(session, now=deps.clock()))
    except Exception as exc:
        log.warning("http.metrics_failed error=%s", type(exc).__name__)
        return web.Response(text=f"database unavailable ({type(exc).__name__})\n", status=503,
                            content_type="text/plain")
    response = web.Response(text=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def register_ops_routes(app: web.Application) -> None:
    """Add /healthz and /metrics to the web application (its DEPS already set)."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
