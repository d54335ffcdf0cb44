"""The qaflow-mail command line, run as a user runs it, against a real database; and `serve` as a process."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qaflow_mail.config import Settings

REPO = Path(__file__).resolve().parents[2]


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QAFLOW_")}
    env.update(
        QAFLOW_DATABASE__URL=settings.database.url,
        QAFLOW_SITE__DOMAIN=settings.site.domain,
        QAFLOW_SITE__DATA_DIR=settings.site.data_dir,
        QAFLOW_TOKENS__SECRET=settings.tokens.secret,
        QAFLOW_OUTBOUND__OUTBOX_DIR=settings.outbound.outbox_dir,
        QAFLOW_LOGGING__LEVEL="WARNING",
        **extra,
    )
    return env


def cli(settings: Settings, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "qaflow_mail", *args], env=cli_env(settings, **extra), cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[str], log_path: Path, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {log_path.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # polling a port with a deadline, not waiting for a result
    raise AssertionError(f"port {port} did not open")


def test_categories_users_topics_round_trip(settings: Settings) -> None:
    cli(settings, "db", "upgrade")
    slugs = [c["slug"] for c in json.loads(cli(settings, "category", "list", "--json").stdout)]
    assert {"general", "announcements"} <= set(slugs)
    cli(settings, "category", "add", "python", "--name", "Python help", "--allow-strangers")
    categories = {c["slug"]: c for c in json.loads(cli(settings, "category", "list", "--json").stdout)}
    assert categories["python"]["allow_strangers"] is True
    assert categories["python"]["address"] == "python@forum.test"

    dup = cli(settings, "category", "add", "python", check=False)
    assert dup.returncode == 1 and "exists already" in dup.stderr
    bad = cli(settings, "category", "add", "announce", check=False)
    assert bad.returncode == 1 and "invalid category slug" in bad.stderr

    cli(settings, "user", "add", "Admin@Example.org", "--name", "Ada", "--admin")
    users = json.loads(cli(settings, "user", "list", "--json").stdout)
    assert users == [
        {"id": users[0]["id"], "email": "admin@example.org", "name": "Ada", "admin": True, "status": "active",
         "created_at": users[0]["created_at"]}
    ]
    assert json.loads(cli(settings, "topics", "--json").stdout) == []
    missing = cli(settings, "topic", "show", "999", check=False)
    assert missing.returncode == 1 and "no topic 999" in missing.stderr


def test_bad_config_is_one_clear_line(settings: Settings) -> None:
    result = cli(settings, "category", "list", check=False, QAFLOW_SMTP__PORT="not-a-port")
    assert result.returncode == 1
    assert result.stderr.strip() == "qaflow-mail: [smtp] port: expected an integer, got 'not-a-port'"


def serve_one_mail_then_sigterm(proc: subprocess.Popen[str], port: int, log_path: Path) -> None:
    try:
        wait_for_port(port, proc, log_path)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            refused = client.sendmail(
                "alice@example.org", ["general@forum.test"],
                b"From: Alice <alice@example.org>\r\nTo: general@forum.test\r\nSubject: Via serve\r\n"
                b"Message-ID: <serve-1@example.org>\r\n\r\nHello from a real client.\r\n",
            )
        assert refused == {}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_takes_mail_and_stops_on_sigterm(settings: Settings) -> None:
    port = free_port()
    cli(settings, "db", "upgrade")
    cli(settings, "user", "add", "alice@example.org", "--name", "Alice")
    env = cli_env(settings, QAFLOW_SMTP__PORT=str(port), QAFLOW_HTTP__PORT=str(free_port()))
    log_path = Path(settings.site.data_dir) / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log, subprocess.Popen(
        [sys.executable, "-m", "qaflow_mail", "serve"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        serve_one_mail_then_sigterm(proc, port, log_path)
    assert "Traceback" not in log_path.read_text()
    topics = json.loads(cli(settings, "topics", "--json").stdout)
    assert [(t["subject"], t["author"], t["posts"], t["category"]) for t in topics] == [
        ("Via serve", "alice@example.org", 1, "general")
    ]
    shown = json.loads(cli(settings, "topic", "show", str(topics[0]["id"]), "--json").stdout)
    assert shown["posts"][0]["message_id"] == "serve-1@example.org"
    assert shown["posts"][0]["parent_id"] is None
    assert "Hello from a real client." in shown["posts"][0]["body"]


@pytest.mark.parametrize("args", [["topics"], ["user", "list"], ["category", "list"]])
def test_listings_have_text_output(settings: Settings, args: list[str]) -> None:
    cli(settings, "db", "upgrade")
    assert cli(settings, *args).returncode == 0
