"""`qaflow-mail serve` as a real child process on a config file of its own, for fault tests and benchmarks.

    server = ServeProcess(tmp_path, database_url=url, extra={"outbound": {"transport": "smtp", ...}})
    server.start()                       # returns once the SMTP port answers with a banner
    server.kill()                        # SIGKILL, as the kernel's OOM killer or a power cut would
    server.rss_bytes(), server.rss_bytes(children=True)

The listener's port is chosen free before each start; everything else is the embedded defaults plus `extra`.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def toml_text(sections: Mapping[str, Mapping[str, object]]) -> str:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _rss_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children_of(pid: int) -> list[int]:
    """Every descendant of `pid`: a worker process's own pool processes are grandchildren."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            found.append(child)
            found.extend(_children_of(child))
    return found


class ServeProcess:
    def __init__(self, directory: Path, *, database_url: str, domain: str = "forum.test",
                 extra: Mapping[str, Mapping[str, object]] | None = None, nofile_limit: int | None = None) -> None:
        self.directory = directory
        self.nofile_limit = nofile_limit  # RLIMIT_NOFILE, soft and hard (so the server cannot raise it)
        self.database_url = database_url
        self.domain = domain
        self.extra = extra or {}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "serve.log"

    def config(self) -> dict[str, dict[str, Any]]:
        sections: dict[str, dict[str, Any]] = {
            "site": {"name": "Forum", "domain": self.domain, "base_url": "http://forum.test",
                     "data_dir": str(self.directory)},
            "database": {"url": self.database_url},
            "smtp": {"host": "127.0.0.1", "port": self.port},
            "http": {"enabled": False},
            "tokens": {"secret": "serve-process-secret"},
            "limits": {"sender_rate_per_hour": 1_000_000},
            "digest": {"enabled": False},
            "logging": {"level": "WARNING"},
        }
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
        return sections

    def start(self, timeout: float = 30.0) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port = free_port()
        config_path = self.directory / "serve.toml"
        config_path.write_text(toml_text(self.config()))
        env = {key: value for key, value in os.environ.items() if not key.startswith("QAFLOW_")}
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qaflow_mail", "--config", str(config_path), "serve"],
                cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=self._limit_files,
            )
        self._wait_for_banner(timeout)

    def _limit_files(self) -> None:
        if self.nofile_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile_limit, self.nofile_limit))

    def _wait_for_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    if probe.recv(64).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not answer within {timeout}s: {self.log_tail()}")
            time.sleep(0.05)  # poll interval of the deadline loop

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed; its worker processes are killed with it."""
        if self.process is None or self.process.poll() is not None:
            return
        children = _children_of(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        for child in children:  # orphaned workers: ours, by their ids
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait (SIGKILL when it does not stop within `timeout`)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def rss_bytes(self, *, children: bool = False) -> int:
        """Resident memory of the serving process (with `children`: plus its worker processes)."""
        total = _rss_of(self.pid)
        if children:
            total += sum(_rss_of(child) for child in _children_of(self.pid))
        return total
