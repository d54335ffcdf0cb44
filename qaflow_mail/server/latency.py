"""How long this process takes to answer: a histogram of HTTP request and SMTP/LMTP DATA handling time.

In-process on purpose: a latency is a property of the node that served it, not of the shared database, so each
node keeps its own (labelled with ``[site] node_name``, the host name by default) and Prometheus scrapes each.
It starts empty at every start, like any process-local Prometheus histogram.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest

# No *_created series: a start time per label set tells a scraper nothing here.
disable_created_metrics()  # type: ignore[no-untyped-call]
# A registry of our own: the library's default one would add process and platform series we do not document.
REGISTRY = CollectorRegistry(auto_describe=True)

# SMTP DATA runs the whole pipeline in one transaction (tens of ms); pages are a few ms; both may hit timeouts.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUEST_SECONDS = Histogram(
    "qaflow_mail_request_seconds",
    "Time to answer one HTTP request or one SMTP/LMTP DATA (the message through the pipeline), on this node.",
    ["kind", "node"],
    buckets=BUCKETS,
    registry=REGISTRY,
)


def node_label(configured: str) -> str:
    return configured or socket.gethostname()


@contextmanager
def observed(kind: str, node: str) -> Iterator[None]:
    """Time the block into the histogram (also when it raises: a failure took that long too)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        REQUEST_SECONDS.labels(kind=kind, node=node).observe(time.perf_counter() - started)


def latency_text() -> str:
    """The histogram in the Prometheus text format."""
    return generate_latest(REGISTRY).decode()
