"""/metrics beyond the counts of rows: deliveries by result (read from outbox and bounce rows), digest runs, the
users' bounce scores as a histogram, and this node's request latency (HTTP and SMTP DATA), parsed back with
prometheus-client's own parser."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import OutboxKind
from qaflow_mail.outbound.digest_run import run_digests
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.sender import sending
from qaflow_mail.server.app import Running
from qaflow_mail.server.http import http_server
from tests.sink import SmtpSink
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
NODE = "node-a"


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, node_name=NODE),
        outbound=dataclasses.replace(settings.outbound, **sink.as_relay()),
    )


def _notice(user_id: int, address: str) -> OutgoingMessage:
    raw = make_mail(sender=f"noreply@{DOMAIN}", to=address, subject="A notice", body="Hello.")
    data = raw if isinstance(raw, bytes) else raw.as_bytes()
    return OutgoingMessage(kind=OutboxKind.NOTICE, dedupe_key=f"metrics-test:{address}",
                           message_id=f"<metrics-{user_id}@{DOMAIN}>", envelope_from=f"bounces@{DOMAIN}",
                           recipient=address, raw=data, user_id=user_id)


def _samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


async def test_deliveries_digest_runs_bounce_scores_and_latency(gateway: Running, sink: SmtpSink) -> None:
    now = datetime.now(UTC)
    addresses = ["ok@example.org", "later@example.org", "gone@example.org"]
    async with gateway.deps.sessions() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        ids = [(await queries.add_user(session, email=a, display_name="", now=now)).id for a in addresses]
        await enqueue(session, [_notice(ids[0], addresses[0]), _notice(ids[1], addresses[1])], now=now)
    await gateway.deps.categories.reload()

    async with sending(gateway.deps) as sender:
        sink.fail_with(451, "4.2.1 try later", only=[addresses[1]])
        await sender.flush()  # ok: sent; later: a temporary failure, waits for its retry
        async with gateway.deps.sessions() as session, session.begin():
            await enqueue(session, [_notice(ids[2], addresses[2])], now=now)
        sink.fail_with(550, "5.1.1 no such user", only=[addresses[2]])
        await sender.flush()  # gone: refused for good, a hard bounce
    await run_digests(gateway.deps.sessions, settings=gateway.deps.settings, renderer=gateway.deps.renderer,
                      now=now, period="daily")

    post = make_mail(sender=addresses[0], to=f"general@{DOMAIN}", subject="Hi", body="Hello there.")
    assert (await send(gateway.smtp_port, post, mail_from=addresses[0],
                       rcpt_tos=[f"general@{DOMAIN}"])).data_code == 250

    async with http_server(gateway.deps) as port, aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
        async with client.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            body = await response.text()
    samples = _samples(body)

    def value(name: str, **labels: str) -> float:
        return samples[(f"qaflow_mail_{name}", tuple(sorted(labels.items())))]

    assert [value("deliveries", result=r) for r in ("sent", "retried", "failed", "bounced_hard", "bounced_soft")] \
        == [1, 1, 1, 1, 0]
    assert value("digests_total", period="daily") == 0
    assert value("digest_last_run_digests", period="daily") == 0
    assert abs(value("digest_last_run_timestamp_seconds", period="daily") - now.timestamp()) < 1
    # Three users: two never bounced (score 0), one hard bounce (score 1.0 by default).
    assert value("user_bounce_score_bucket", le="0.0") == 2
    assert value("user_bounce_score_bucket", le="1.0") == 3
    assert value("user_bounce_score_bucket", le="+Inf") == 3
    assert (value("user_bounce_score_count"), value("user_bounce_score_sum")) == (3, 1.0)
    # This node's latency: the SMTP DATA above, the /healthz before this scrape.
    assert value("request_seconds_count", kind="smtp", node=NODE) >= 1
    assert value("request_seconds_count", kind="http", node=NODE) >= 1
    assert value("request_seconds_bucket", kind="smtp", node=NODE, le="+Inf") >= 1
    assert value("request_seconds_sum", kind="smtp", node=NODE) > 0
    assert "ok@example.org" not in body
