"""Health and metrics for the outside: ``GET /healthz`` (the database answers) and ``GET /metrics`` (Prometheus).

- ``/healthz``: 200 "ok" when a trivial query returns within HEALTH_TIMEOUT seconds, else 503 with the reason's
  kind (never the database URL or its error text, which may name hosts and users).
- ``/metrics``: the figures of ``services.metrics`` in the Prometheus text format, read from the database at each
  scrape, this process's request latency (``server.latency``) and, unless [smtp] accept = "inline", the inbound
  queue's depth; 503 when the database does not answer.
- ``request_timing``: the middleware that times every HTTP request into that latency histogram.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from qaflow_mail.server.inbound_queue import InboundQueue
from qaflow_mail.server.latency import latency_text, node_label, observed
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
    if deps.settings.smtp.accept != "inline":
        body += await asyncio.to_thread(queue_text, InboundQueue(deps.settings.smtp.queue_dir))
    response = web.Response(text=body + latency_text())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def queue_text(queue: InboundQueue) -> str:
    """The inbound queue's depth and oldest message, in the Prometheus text format."""
    waiting, oldest = queue.depth()
    return (
        "# HELP qaflow_mail_inbound_queue_messages Accepted messages waiting for the pipeline.\n"
        "# TYPE qaflow_mail_inbound_queue_messages gauge\n"
        f"qaflow_mail_inbound_queue_messages {waiting}\n"
        "# HELP qaflow_mail_inbound_queue_oldest_seconds Age of the oldest message waiting for the pipeline.\n"
        "# TYPE qaflow_mail_inbound_queue_oldest_seconds gauge\n"
        f"qaflow_mail_inbound_queue_oldest_seconds {oldest:.1f}\n"
    )


@web.middleware
async def request_timing(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    with observed("http", node_label(request.app[DEPS].settings.site.node_name)):
        return await handler(request)


def register_ops_routes(app: web.Application) -> None:
    """Add /healthz and /metrics to the web application (its DEPS already set)."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
