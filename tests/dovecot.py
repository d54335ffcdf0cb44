"""A throwaway Dovecot IMAP server for tests: all state in one directory, loopback only, free ports.

    server = Dovecot.create()                         # a new temp dir: config, passwd, Maildir, certificate
    server.start()                                    # returns once the IMAP greeting arrives
    server.deliver(raw)                               # IMAP APPEND into INBOX (imaplib)
    server.drop(raw)                                  # an MDA-style write into the Maildir (works while stopped)
    server.stop(); server.start()                     # down (connection refused), then up again, same ports
    server.messages()                                 # [(uid, flags)] of a mailbox, to check what the client did
    server.remove()                                   # stop and delete the directory

Plain IMAP on `port`, IMAPS on `ssl_port`; the certificate names 127.0.0.1 and localhost, so
`ssl.create_default_context(cafile=server.ca_cert)` verifies it. Needs the `dovecot` and `openssl` binaries
(scripts/install-test-peers.sh installs them). As root, mail belongs to `nobody` (Dovecot refuses uid 0);
as another user, everything runs as that user.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PROBE_INTERVAL = 0.02
DH_PARAMS = Path("/usr/share/dovecot/dh.pem")
INSTALL_HINT = "run scripts/install-test-peers.sh as root"


class DovecotError(RuntimeError):
    """Dovecot could not be started; the message carries the end of its log."""


def dovecot_binary() -> str | None:
    """The dovecot executable (it lives in sbin, which is not on every PATH), or None."""
    found = shutil.which("dovecot")
    if found:
        return found
    for candidate in ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_binaries() -> list[str]:
    missing = [] if dovecot_binary() else ["dovecot"]
    if shutil.which("openssl") is None:
        missing.append("openssl")
    return missing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...); [] when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return stat.rpartition(")")[2].split()  # the name is parenthesised and may contain spaces


def alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped) counts as gone."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _mail_owner() -> tuple[int, int]:
    if os.geteuid() == 0:  # passwd-file refuses uid 0
        nobody = pwd.getpwnam("nobody")
        return nobody.pw_uid, nobody.pw_gid
    return os.getuid(), os.getgid()


@dataclass
class Dovecot:
    directory: Path
    port: int
    ssl_port: int
    user: str = "test"
    password: str = "secret"
    host: str = HOST
    # When set, replaces the capability list Dovecot advertises after login (e.g. a server without IDLE or MOVE).
    capabilities: str | None = None

    @classmethod
    def create(cls, *, parent: Path | None = None, capabilities: str | None = None) -> Dovecot:
        """Write the config, passwd file, Maildir and certificate into a new directory under `parent` (default: the
        system temp dir). Dovecot's own users must traverse every directory above it, which pytest's 0700 tmp_path
        forbids; hence a directory of its own."""
        directory = Path(tempfile.mkdtemp(prefix="qaflow-dovecot-", dir=parent))
        port = free_port()
        ssl_port = free_port()
        while ssl_port == port:
            ssl_port = free_port()
        server = cls(directory=directory.resolve(), port=port, ssl_port=ssl_port, capabilities=capabilities)
        server._prepare()
        return server

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def maildir(self) -> Path:
        return self.directory / "mail" / self.user / "Maildir"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def config_file(self) -> Path:
        return self.directory / "dovecot.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / "dovecot.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "run" / "master.pid"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))

    # --- lifecycle ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        d = self.directory
        for sub in ("run", "state", "mail"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)  # Dovecot's unprivileged processes must traverse it (tmp dirs are 0700)
        if not self.ca_cert.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "3650", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                 "-keyout", str(d / "key.pem"), "-out", str(self.ca_cert)],
                check=True, capture_output=True, timeout=30,
            )
        (d / "key.pem").chmod(0o600)
        uid, gid = _mail_owner()
        home = d / "mail" / self.user
        passwd = d / "passwd"
        passwd.write_text(f"{self.user}:{{PLAIN}}{self.password}:{uid}:{gid}::{home}\n")
        passwd.chmod(0o644)
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for path in (d / "mail", home, home / "Maildir", *(self.maildir / s for s in ("cur", "new", "tmp"))):
                os.chown(path, uid, gid)
        self.config_file.write_text(self._config())

    def _config(self) -> str:
        d = self.directory
        lines = [
            "# throwaway test instance",
            f"base_dir = {d}/run",
            f"state_dir = {d}/state",
            f"instance_name = qaflow-test-{self.port}",
            "protocols = imap",
            f"listen = {self.host}",
            f"log_path = {self.log_file}",
            f"info_log_path = {self.log_file}",
            "ssl = yes",
            f"ssl_cert = <{self.ca_cert}",
            f"ssl_key = <{d}/key.pem",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "auth_failure_delay = 0 secs",
            "first_valid_uid = 1",
            "mail_location = maildir:~/Maildir",
            "mailbox_idle_check_interval = 1 secs",
        ]
        if DH_PARAMS.exists():
            lines.append(f"ssl_dh = <{DH_PARAMS}")
        if os.geteuid() != 0:
            user = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            lines += [f"default_internal_user = {user}", f"default_internal_group = {group}",
                      f"default_login_user = {user}"]
        if self.capabilities is not None:
            lines.append(f"imap_capability = {self.capabilities}")
        lines += [
            "passdb {", "  driver = passwd-file", f"  args = scheme=PLAIN username_format=%u {d}/passwd", "}",
            "userdb {", "  driver = passwd-file", f"  args = username_format=%u {d}/passwd", "}",
            "protocol imap {", "  mail_max_userip_connections = 1000", "}",
            "service imap-login {",
            "  inet_listener imap {", f"    address = {self.host}", f"    port = {self.port}", "  }",
            "  inet_listener imaps {", f"    address = {self.host}", f"    port = {self.ssl_port}", "    ssl = yes",
            "  }",
            "}",
        ]
        if os.geteuid() != 0:  # no chroot and no user switches without root
            lines += ["service imap-login {", "  chroot =", "}", "service anvil {", "  chroot =", "}",
                      "service auth-worker {", "  user = $default_internal_user", "}"]
        return "\n".join(lines) + "\n"

    def master_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.master_pid()
        return pid is not None and alive(pid)

    def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start the daemon (it forks; its pid lands in run/master.pid) and wait for the IMAP greeting."""
        if self.running():
            return
        binary = dovecot_binary()
        if binary is None:
            raise DovecotError(f"dovecot is not installed: {INSTALL_HINT}")
        # Not a pipe: the daemon keeps the descriptors it was started with, so reading a pipe would never end.
        errors = self.directory / "dovecot.stderr"
        with errors.open("wb") as stderr:
            result = subprocess.run([binary, "-c", str(self.config_file)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr, timeout=timeout, check=False)
        if result.returncode != 0:
            detail = errors.read_text(errors="replace").strip()
            raise DovecotError(f"dovecot exited {result.returncode}: {detail}\n{self._log_tail()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._greets():
                return
            time.sleep(PROBE_INTERVAL)
        self.stop()
        raise DovecotError(f"no IMAP greeting on {self.host}:{self.port} within {timeout} s\n{self._log_tail()}")

    def _greets(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                greeting = sock.recv(512)
                with contextlib.suppress(OSError):
                    sock.sendall(b"a LOGOUT\r\n")
                return greeting.startswith(b"* OK")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the daemon at once (connection refused from then on); safe to call twice.

        SIGKILL to the master's process group: a test server has nothing to save. SIGTERM is slower and not safe
        to follow with a kill: after a client was in IDLE, the master lingers about a second in its shutdown,
        holding the lock on state/instances; killed there, the next start waits ten seconds for that lock.
        """
        pid = self.master_pid()
        if pid is not None and alive(pid):
            self._signal(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.005)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no dovecot log)"

    # --- mail -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def client(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in imaplib connection (plain IMAP), for setting up and inspecting the mailbox."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            conn.login(self.user, self.password)
            yield conn
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    def deliver(self, raw: bytes, mailbox: str = "INBOX") -> None:
        """Put a message into a mailbox by IMAP APPEND, as another mail client (or the MDA) would."""
        with self.client() as conn:
            status, detail = conn.append(mailbox, "", imaplib.Time2Internaldate(time.time()), raw)
            if status != "OK":
                raise DovecotError(f"APPEND to {mailbox} failed: {detail!r}")

    def drop(self, raw: bytes) -> None:
        """Deliver like an MDA, straight into the Maildir (tmp/ then new/): works while the server is stopped."""
        name = f"{time.time_ns()}.P{os.getpid()}.qaflow-test"
        tmp = self.maildir / "tmp" / name
        tmp.write_bytes(raw)
        tmp.chmod(0o644)
        if os.geteuid() == 0:
            os.chown(tmp, *_mail_owner())
        tmp.rename(self.maildir / "new" / name)

    def messages(self, mailbox: str = "INBOX") -> list[tuple[int, frozenset[str]]]:
        """(uid, flags) of every message in a mailbox, read without changing anything."""
        with self.client() as conn:
            status, _ = conn.select(mailbox, readonly=True)
            if status != "OK":
                return []
            status, data = conn.uid("FETCH", "1:*", "(FLAGS)")
        found: list[tuple[int, frozenset[str]]] = []
        for item in data:
            if not isinstance(item, bytes):
                continue
            uid = re.search(rb"UID (\d+)", item)
            flags = re.search(rb"FLAGS \(([^)]*)\)", item)
            if uid:
                found.append((int(uid.group(1)), frozenset(flags.group(1).decode().split() if flags else ())))
        return found


@contextlib.contextmanager
def dovecot_server(*, capabilities: str | None = None) -> Iterator[Dovecot]:
    """A started server, stopped and deleted on exit."""
    server = Dovecot.create(capabilities=capabilities)
    try:
        server.start()
        yield server
    finally:
        server.remove()
