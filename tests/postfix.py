"""A throwaway Postfix in front of the gateway, as docs/production.md sets it up: all state in one directory,
loopback only, no DNS.

    front = Postfix.create(domain="forum.example.org", lmtp_port=8024, relay_port=sink.port, port=free_port())
    front.start()                   # returns once the SMTP greeting arrives
    front.stop(); front.remove()

Mail for `domain` goes to the gateway over LMTP (``relay_domains`` + ``transport_maps``); everything else, what
the gateway sends out through it, is relayed to 127.0.0.1:`relay_port` (a sink standing in for the Internet).
Needs the postfix package (scripts/install-test-peers.sh installs it) and root (Postfix's queue is owned by the
``postfix`` user, and its master daemon must start as root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
PROBE_INTERVAL = 0.02
INSTALL_HINT = "run scripts/install-test-peers.sh as root"
QUEUE_DIRS = ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private", "saved",
              "trace")

MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def front_main_cf(*, directory: Path, domain: str, relay_port: int) -> str:
    """main.cf of the front: the production settings of docs/production.md, plus a private queue and log, and a
    relayhost instead of MX lookups."""
    return f"""\
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {directory}/postfix.log
maillog_file_prefixes = {directory}
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $mydomain
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = {HOST}
inet_protocols = ipv4
# --- as in docs/production.md ---
relay_domains = {domain}
transport_maps = texthash:{directory}/etc/transport
relay_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
message_size_limit = 26214400
lmtp_destination_recipient_limit = 50
# --- test machine only: no DNS, everything not ours goes to the sink ---
relayhost = [{HOST}]:{relay_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
in_flow_delay = 0s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
smtpd_error_sleep_time = 0
biff = no
"""


def postfix_daemon_dir() -> Path | None:
    postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    if not os.access(postconf, os.X_OK):
        return None
    found = subprocess.run([postconf, "-h", "-d", "daemon_directory"], capture_output=True, text=True, check=False)
    path = Path(found.stdout.strip() or "/usr/lib/postfix/sbin")
    return path if (path / "master").exists() else None


def unavailable() -> str | None:
    """Why a Postfix cannot be started here, or None."""
    if postfix_daemon_dir() is None:
        return f"postfix is not installed: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "Postfix's master daemon must start as root"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Postfix:
    directory: Path
    domain: str
    port: int
    lmtp_port: int
    relay_port: int
    pid: int | None = None

    @classmethod
    def create(cls, *, domain: str, lmtp_port: int, relay_port: int, port: int | None = None) -> Postfix:
        directory = Path(tempfile.mkdtemp(prefix="qaflow-postfix-"))
        front = cls(directory=directory, domain=domain, port=port or free_port(), lmtp_port=lmtp_port,
                    relay_port=relay_port)
        front._write_config()
        return front

    @property
    def log(self) -> Path:
        return self.directory / "postfix.log"

    def _write_config(self) -> None:
        etc = self.directory / "etc"
        etc.mkdir(parents=True)
        self.directory.chmod(0o755)  # the postfix user must reach its queue
        (etc / "main.cf").write_text(front_main_cf(directory=self.directory, domain=self.domain,
                                                   relay_port=self.relay_port))
        (etc / "master.cf").write_text(MASTER_CF.format(host=HOST, port=self.port))
        (etc / "transport").write_text(f"{self.domain}    lmtp:inet:[{HOST}]:{self.lmtp_port}\n")
        # Postfix waits ~2 s on every start for a main.cf changed within the last second ("cool down").
        past = time.time() - 60
        for name in ("main.cf", "master.cf", "transport"):
            os.utime(etc / name, (past, past))

    def start(self) -> None:
        daemon_dir = postfix_daemon_dir()
        assert daemon_dir is not None
        queue = self.directory / "queue"
        data = self.directory / "data"
        for path, mode, group in [(data, 0o700, "root"), *((queue / d, 0o700, "root") for d in QUEUE_DIRS),
                                  (queue / "maildrop", 0o730, "postdrop"), (queue / "public", 0o710, "postdrop")]:
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, "postfix", group)
            path.chmod(mode)
        shutil.chown(queue, "root", "root")
        (queue / "pid").mkdir(exist_ok=True)
        started = subprocess.run([str(daemon_dir / "master"), "-c", str(self.directory / "etc"), "-w"],
                                 capture_output=True, text=True, check=False, timeout=START_TIMEOUT)
        if started.returncode != 0:
            raise RuntimeError(f"postfix did not start: {started.stderr}{self._log_tail()}")
        self.pid = int((queue / "pid" / "master.pid").read_text().strip())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1) as sock:
                if sock.recv(64).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
            time.sleep(PROBE_INTERVAL)
        raise RuntimeError(f"postfix did not answer on {HOST}:{self.port}{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\n" + "\n".join(self.log.read_text().splitlines()[-20:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.pid is None:
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT
        while _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(PROBE_INTERVAL)
        if _alive(self.pid):
            self._signal(signal.SIGKILL)
        self.pid = None

    def _signal(self, signum: int) -> None:
        """To master's process group when it leads one (all its daemons at once), else to master alone."""
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
