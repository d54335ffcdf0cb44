"""What a new operator runs into, run as they run it: commands outside the checkout, before `db upgrade`, with
the URLs other tools take, into a pipe that closes early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qaflow_mail.config import load_settings

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path, stdin_pipe: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QAFLOW_")}
    clean["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "qaflow_mail", *args], env={**clean, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_reading_before_db_upgrade_says_what_to_do_and_creates_nothing(tmp_path: Path) -> None:
    result = run("outbox", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "run `qaflow-mail db upgrade` first" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no ./var, no empty database


def test_plain_sqlite_url_works_and_an_empty_schema_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.touch()  # a database file without our tables
    url = f"sqlite:///{path}"
    empty = run("outbox", cwd=tmp_path, QAFLOW_DATABASE__URL=url)
    assert empty.returncode == 1 and "has no schema" in empty.stderr and "Traceback" not in empty.stderr
    debug = run("--debug", "outbox", cwd=tmp_path, QAFLOW_DATABASE__URL=url)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert run("db", "upgrade", cwd=tmp_path, QAFLOW_DATABASE__URL=url).returncode == 0
    listed = run("outbox", cwd=tmp_path, QAFLOW_DATABASE__URL=url)
    assert listed.returncode == 0 and "outbox empty" in listed.stdout


def test_unreachable_server_and_wrong_url_are_one_line(tmp_path: Path) -> None:
    down = run("outbox", cwd=tmp_path, QAFLOW_DATABASE__URL="postgresql://nobody@127.0.0.1:1/none",
               QAFLOW_TOKENS__SECRET="s")
    assert down.returncode == 1 and "cannot reach the database server 127.0.0.1:1" in down.stderr
    assert "Traceback" not in down.stderr
    wrong = run("outbox", cwd=tmp_path, QAFLOW_DATABASE__URL="mysql://x/y")
    assert wrong.returncode == 1 and "unsupported database" in wrong.stderr and "Traceback" not in wrong.stderr
    bad_key = run("outbox", cwd=tmp_path, QAFLOW_SMTP__PROT="1")
    assert bad_key.returncode == 1 and "unknown key(s) prot" in bad_key.stderr


def test_closed_pipe_is_quiet(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert run("db", "upgrade", cwd=tmp_path, QAFLOW_DATABASE__URL=url).returncode == 0
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QAFLOW_")}
    env = {**clean, "PYTHONPATH": str(REPO), "QAFLOW_DATABASE__URL": url}
    # `--help`-sized output is too small to fill a pipe: `check-config` prints the whole config, then `head`
    # has already gone.
    pipeline = subprocess.run(
        f"{sys.executable} -m qaflow_mail category list --json | head -c 1 >/dev/null; "
        f"{sys.executable} -m qaflow_mail check-config | (exec 0<&-; true)",
        shell=True, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert "BrokenPipeError" not in pipeline.stderr and "Traceback" not in pipeline.stderr, pipeline.stderr


@pytest.mark.parametrize(("env", "expected"), [
    ({"QAFLOW_HTTP__PORT": "18080"}, "http://127.0.0.1:18080"),
    ({"QAFLOW_HTTP__HOST": "0.0.0.0", "QAFLOW_HTTP__PORT": "9000"}, "http://127.0.0.1:9000"),
    ({"QAFLOW_HTTP__PORT": "18080", "QAFLOW_SITE__BASE_URL": "https://forum.example.org"},
     "https://forum.example.org"),
])
def test_base_url_follows_the_http_listener(env: dict[str, str], expected: str) -> None:
    assert load_settings(None, env).site.base_url == expected


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "qaflow.toml"
    config.parent.mkdir()
    config.write_text('[site]\ndata_dir = "state"\n[database]\nurl = "sqlite:///db/main.db"\n'
                      '[dkim]\nselector = "s"\nprivate_key_file = "keys/s.key"\n')
    settings = load_settings(config, {})
    etc = config.parent.resolve()
    assert settings.site.data_dir == str(etc / "state")
    assert settings.outbound.outbox_dir == str(etc / "state" / "outbox")
    assert settings.database.url == f"sqlite+aiosqlite:///{etc / 'db' / 'main.db'}"
    assert settings.dkim.private_key_file == str(etc / "keys" / "s.key")
    assert load_settings(None, {"QAFLOW_DATABASE__URL": "postgresql://u@h/d"}).database.url == \
        "postgresql+asyncpg://u@h/d"
