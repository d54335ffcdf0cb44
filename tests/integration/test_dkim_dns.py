"""DKIM end to end: `dkim keygen` makes a key, `dns` prints its record, the gateway signs what it sends, and
dkimpy verifies the delivered mail against exactly the record `dns` printed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest

from qaflow_mail.config import DkimSettings, Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import CategorySubscription, SubscriptionMode
from qaflow_mail.outbound.sender import sending
from qaflow_mail.server.app import Running
from tests.fanout import fanout_done
from tests.sink import SmtpSink
from tests.smtp_client import make_mail, send

REPO = Path(__file__).resolve().parents[2]
SELECTOR = "gw2024"
ALICE, BOB = "alice@example.org", "bob@example.net"


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QAFLOW_")}
    return subprocess.run([sys.executable, "-m", "qaflow_mail", *args], env={**clean, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def dkim_key(tmp_path: Path) -> Path:
    key = tmp_path / "keys" / f"{SELECTOR}.key"
    made = run_cli("dkim", "keygen", "--selector", SELECTOR, "--out", str(key), "--bits", "1024",
                   QAFLOW_SITE__DOMAIN="forum.test", QAFLOW_SITE__DATA_DIR=str(tmp_path / "var"))
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o077 == 0
    again = run_cli("dkim", "keygen", "--out", str(key), QAFLOW_SITE__DATA_DIR=str(tmp_path / "var"))
    assert again.returncode == 1 and "exists already" in again.stderr  # a key is never replaced by accident
    return key


@pytest.fixture
def printed_records(dkim_key: Path, tmp_path: Path) -> dict[str, str]:
    """`qaflow-mail dns --json` for the key: record name → TXT value."""
    out = run_cli("dns", "--json", QAFLOW_SITE__DOMAIN="forum.test", QAFLOW_DKIM__SELECTOR=SELECTOR,
                  QAFLOW_DKIM__PRIVATE_KEY_FILE=str(dkim_key), QAFLOW_SITE__DATA_DIR=str(tmp_path / "var"),
                  QAFLOW_SITE__BASE_URL="https://forum.test")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["https"] is None
    types = {(r["name"], r["type"]) for r in data["records"]}
    assert {("forum.test", "MX"), ("forum.test", "TXT"), ("_dmarc.forum.test", "TXT"),
            (f"{SELECTOR}._domainkey.forum.test", "TXT")} <= types
    return {r["name"]: r["value"] for r in data["records"] if r["type"] == "TXT"}


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink, dkim_key: Path) -> Settings:
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, base_url="https://forum.test"),
        outbound=dataclasses.replace(settings.outbound, transport="smtp", smtp_host="127.0.0.1",
                                     smtp_port=sink.port),
        dkim=DkimSettings(selector=SELECTOR, private_key_file=str(dkim_key)),
    )


async def test_sent_mail_verifies_against_the_printed_record(
    gateway: Running, sink: SmtpSink, printed_records: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    async with gateway.deps.sessions() as session, session.begin():
        general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        for address in (ALICE, BOB):
            user = await queries.add_user(session, email=address, display_name=address[:3], now=now)
            session.add(CategorySubscription(user_id=user.id, category_id=general.id, mode=SubscriptionMode.EACH,
                                             created_at=now))
    await gateway.deps.categories.reload()
    mail = make_mail(sender=f"Alice <{ALICE}>", to="general@forum.test", subject="Signed?", body="Hello.\n",
                     message_id="<d1@client.test>")
    assert (await send(gateway.smtp_port, mail, mail_from=ALICE, rcpt_tos=["general@forum.test"])).data_code == 250
    await fanout_done(gateway.deps)
    async with sending(gateway.deps) as sender:
        await sender.flush()
    delivered = await sink.wait_for(1)
    raw = delivered[0].raw

    record = printed_records[f"{SELECTOR}._domainkey.forum.test"]

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return record.encode() if name == f"{SELECTOR}._domainkey.forum.test.".encode() else None

    assert raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(raw, dnsfunc=dnsfunc)
    signature = dkim.DKIM(raw)
    signature.verify(dnsfunc=dnsfunc)
    tags = dkim.util.parse_tag_value(raw.split(b"\r\n\r\n")[0].split(b"DKIM-Signature:", 1)[1]
                                     .split(b"\r\nFrom:")[0].replace(b"\r\n", b""))
    assert tags[b"c"] == b"relaxed/relaxed" and tags[b"d"] == b"forum.test" and tags[b"s"] == SELECTOR.encode()
    signed = {h.strip().lower() for h in tags[b"h"].split(b":")}
    assert {b"from", b"to", b"subject", b"date", b"message-id", b"list-id", b"list-unsubscribe",
            b"list-unsubscribe-post"} <= signed

    tampered = raw.replace(b"List-Unsubscribe: <", b"List-Unsubscribe: <https://evil.example/>, <", 1)
    assert tampered != raw
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)
    other_key = "v=DKIM1; k=rsa; p=" + "".join(record.split("p=")[1:])[::-1]
    assert not dkim.verify(raw, dnsfunc=lambda name, timeout=5: other_key.encode())
