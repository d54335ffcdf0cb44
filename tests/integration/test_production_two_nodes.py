"""The production setup of docs/production.md, for real on loopback: Postfix in front (relay_domains, LMTP to the
gateway, outbound relayed through it), PostgreSQL, two `qaflow-mail serve` processes on config/production.example.toml
sharing it, and DKIM-signed mail that dkimpy verifies against the record `qaflow-mail dns` printed.

A post mailed to Postfix reaches node A over LMTP; its notification leaves through Postfix (whichever node drains
the outbox) to a sink standing in for the Internet; node B serves the same figures. Skipped without Postfix (or
root) and without QAFLOW_TEST_POSTGRES_URL, with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import dkim
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import POSTGRES_URL_ENV, REPO_ROOT, _truncate_postgres
from tests.postfix import Postfix, free_port, unavailable
from tests.sink import SmtpSink
from tests.smtp_client import make_mail, send

DOMAIN = "forum.example.org"  # config/production.example.toml's
SELECTOR = "qf2025"
ALICE, BOB = "alice@example.net", "bob@example.com"
START_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 30.0
POLL = 0.05


@pytest.fixture
def front_available() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(reason)


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    http_port: int
    lmtp_port: int
    log: Path

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class Site:
    """One config file, the environment every node and command shares, and the nodes started."""

    def __init__(self, directory: Path, database_url: str, outbound_port: int) -> None:
        self.directory = directory
        self.config = directory / "qaflow.toml"
        shutil.copy(REPO_ROOT / "config" / "production.example.toml", self.config)
        self.key = directory / "dkim" / f"{SELECTOR}.key"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("QAFLOW_")}
        self.env = {
            **clean,
            "QAFLOW_DATABASE__URL": database_url,
            "QAFLOW_TOKENS__SECRET": "two-node-test-secret",
            "QAFLOW_SITE__DATA_DIR": str(directory / "var"),
            "QAFLOW_DKIM__PRIVATE_KEY_FILE": str(self.key),
            "QAFLOW_OUTBOUND__SMTP_PORT": str(outbound_port),
            "QAFLOW_LOGGING__FORMAT": "text",
        }
        self.nodes: list[Node] = []
        self.front_port = outbound_port

    async def cli(self, *args: str) -> str:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "qaflow_mail", "--config", str(self.config), *args],
            env=self.env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"qaflow-mail {' '.join(args)}: {done.stderr}"
        return done.stdout

    def start_node(self, name: str) -> Node:
        http_port, lmtp_port, smtp_port = free_port(), free_port(), free_port()
        log = self.directory / f"{name}.log"
        env = {**self.env, "QAFLOW_SITE__NODE_NAME": name, "QAFLOW_HTTP__PORT": str(http_port),
               "QAFLOW_LMTP__PORT": str(lmtp_port), "QAFLOW_SMTP__PORT": str(smtp_port)}
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "qaflow_mail", "--config", str(self.config), "serve"],
                                       env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name=name, process=process, http_port=http_port, lmtp_port=lmtp_port, log=log)
        self.nodes.append(node)
        return node

    def stop(self) -> list[int]:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        codes: list[int] = []
        for node in self.nodes:
            try:
                codes.append(node.process.wait(timeout=45))
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, signal.SIGKILL)
                codes.append(node.process.wait())
        return codes


@pytest.fixture
def site(tmp_path: Path, front_available: None, sink: SmtpSink) -> Iterator[Site]:
    raw_url = os.environ.get(POSTGRES_URL_ENV)
    if not raw_url:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set: the two nodes share PostgreSQL")
    _truncate_postgres(raw_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    outbound_port = free_port()  # Postfix's SMTP port: the nodes relay through it
    made = Site(tmp_path, raw_url, outbound_port)  # the plain postgresql:// URL, as an operator writes it
    try:
        yield made
    finally:
        made.stop()


async def ready(node: Node) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                pytest.fail(f"{node.name} exited: {node.log.read_text()[-3000:]}")
            try:
                async with client.get(node.web + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(POLL)
    pytest.fail(f"{node.name} not ready within {START_TIMEOUT}s: {node.log.read_text()[-3000:]}")


async def figures(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as client, client.get(node.web + "/metrics") as response:
        assert response.status == 200
        body = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


async def test_postfix_lmtp_two_nodes_postgresql_and_dkim(site: Site, sink: SmtpSink) -> None:
    started = time.monotonic()
    await site.cli("dkim", "keygen", "--selector", SELECTOR, "--out", str(site.key), "--bits", "1024")
    printed = json.loads(await site.cli("dns", "--json"))
    assert printed["https"] is None  # base_url is https in the production example
    [record] = [r["value"] for r in printed["records"] if r["name"] == f"{SELECTOR}._domainkey.{DOMAIN}"]
    await site.cli("db", "upgrade")

    node_a, node_b = site.start_node("node-a"), site.start_node("node-b")  # both migrate at start: the lock
    await asyncio.gather(ready(node_a), ready(node_b))
    front = Postfix.create(domain=DOMAIN, lmtp_port=node_a.lmtp_port, relay_port=sink.port,
                           port=site.front_port)
    try:
        await asyncio.to_thread(front.start)
        await site.cli("user", "add", ALICE, "--name", "Alice")
        await site.cli("user", "add", BOB, "--name", "Bob")
        await site.cli("subscribe", BOB, "--category", "general", "--mode", "each")

        # In through Postfix: relay_domains accepts it, the transport map hands it to node A over LMTP.
        post = make_mail(sender=f"Alice <{ALICE}>", to=f"general@{DOMAIN}", subject="Two nodes",
                         body="Does the notification come back signed?")
        reply = await send(front.port, post, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])
        assert reply.data_code == 250

        # Out through Postfix to the sink: the notification to Bob, DKIM-signed by whichever node sent it.
        [notification] = await sink.wait_for(1, timeout=DELIVERY_TIMEOUT)
        assert notification.rcpt_tos == (BOB,)
        raw = notification.raw
        assert f"mx.{DOMAIN}".encode() in raw.split(b"\r\n\r\n", 1)[0]  # Postfix's Received: it went through
        name = f"{SELECTOR}._domainkey.{DOMAIN}.".encode()
        assert dkim.verify(raw, dnsfunc=lambda qname, timeout=5: record.encode() if qname == name else None)
        log = front.log.read_text()
        assert f"relay=127.0.0.1[127.0.0.1]:{node_a.lmtp_port}" in log and "status=sent" in log

        # Node B never saw the mail, yet serves the same figures: they come from the shared database.
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while True:
            a, b = await figures(node_a), await figures(node_b)
            if b.get(("qaflow_mail_deliveries", (("result", "sent"),))) == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL)
        for key in [("qaflow_mail_posts", (("status", "published"),)),
                    ("qaflow_mail_inbound_messages", (("disposition", "accepted"),)),
                    ("qaflow_mail_deliveries", (("result", "sent"),))]:
            assert a[key] == b[key] == 1, key
        assert a[("qaflow_mail_request_seconds_count", (("kind", "lmtp"), ("node", "node-a")))] == 1
        assert ("qaflow_mail_request_seconds_count", (("kind", "lmtp"), ("node", "node-b"))) not in b
        topics = await site.cli("topics", "--json")
        assert "Two nodes" in topics
    finally:
        await asyncio.to_thread(front.remove)
    assert site.stop() == [0, 0]  # SIGTERM: both finish cleanly
    print(f"two-node run: {time.monotonic() - started:.1f} s")
