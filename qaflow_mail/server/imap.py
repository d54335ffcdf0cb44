"""The IMAP listener: reads a hosted mailbox and hands each unseen message to the same `ingest` as SMTP.

One round: NOOP (so the server reports what arrived), UID SEARCH UNSEEN UNDELETED, then for each UID:
UID FETCH BODY.PEEK[] (which does not set \\Seen), `ingest`, and only after ingest has committed, mark it:
UID MOVE to [imap] processed_mailbox when set (COPY + \\Deleted + EXPUNGE on servers without MOVE), else
\\Seen \\Deleted and EXPUNGE. A crash between the commit and the mark leaves the message unseen; the next round
ingests it again and the dedupe step discards it, so every message is posted once.

- A refusal for good (a 5xx outcome: unknown sender, no such category) is marked processed like a post: the
  pipeline has recorded it and, for this source, queued a notice to the sender.
- A temporary failure (ingest raised, e.g. the database is down) or a temporary refusal (a 4xx outcome, e.g. the
  sender's hourly limit) leaves the message unseen; it is tried again in the first round at least
  [imap] poll_interval later, as an MTA would retry.
- Between rounds: IDLE when [imap] use_idle and the server offers it (a push or `wake()` starts a round at once;
  IDLE ends after poll_interval, at most 29 minutes, and a round runs anyway), else a sleep of poll_interval.
- A lost or failed connection is opened again after a capped exponential backoff; the task never dies of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import aioimaplib

from qaflow_mail.config import ImapSettings
from qaflow_mail.db.models import Source
from qaflow_mail.deps import Deps
from qaflow_mail.mail.envelope import recipients_from_headers, sender_from_headers
from qaflow_mail.pipeline.ingest import IngestResult, ingest, parse

log = logging.getLogger(__name__)

SOURCE = Source.IMAP
COMMAND_TIMEOUT = 60.0  # any single command, including a FETCH (its timer restarts as data arrives)
IDLE_RENEW_SECONDS = 29 * 60.0  # RFC 2177: a server may drop a client that has idled for 30 minutes
STOP_GRACE_SECONDS = 10.0  # on exit, how long the current message may take before the task is cancelled
MIN_INTERVAL = 0.1  # a poll_interval of 0 must not spin
PROCESSED_FLAGS = r"(\Seen \Deleted)"

_UIDVALIDITY_RE = re.compile(rb"\[UIDVALIDITY (\d+)\]")

T = TypeVar("T")


class ImapError(Exception):
    """The server refused a command, or the connection failed; the poller reconnects."""


class ConnectionLost(ImapError):
    """The server closed the connection (or it broke) while a command or IDLE was waiting."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnection delays: initial, then doubled after each failed attempt, never above maximum."""

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * self.factor ** max(0, failures - 1)))


@dataclass(frozen=True, slots=True)
class PollCounts:
    found: int = 0  # unseen messages in the mailbox at the start of the round
    ingested: int = 0  # committed and marked processed (a post, a duplicate, or a refusal for good)
    rejected: int = 0  # of those, refused by the pipeline (recorded; the sender may get a notice)
    failed: int = 0  # ingest raised: left unseen for a later round
    deferred: int = 0  # refused for now (a 4xx outcome): left unseen for a later round
    waiting: int = 0  # unseen, skipped: an earlier attempt failed less than poll_interval ago


def _text(response: Any) -> str:
    parts = [bytes(line).decode("utf-8", "replace") for line in response.lines if isinstance(line, bytes | bytearray)]
    return " ".join(p for p in parts if p)[:300]


def _check(response: Any, what: str) -> Any:
    if response.result != "OK":
        raise ImapError(f"{what}: {response.result} {_text(response)}")
    return response


def _uids(response: Any) -> list[int]:
    """UIDs from a UID SEARCH response (aioimaplib strips the leading "SEARCH" from the untagged line)."""
    found: list[int] = []
    for line in response.lines[:-1]:  # the last line is the tagged completion text
        if isinstance(line, bytes):
            found.extend(int(token) for token in line.split() if token.isdigit())
    return sorted(set(found))


def _literal(response: Any) -> bytes | None:
    """The message bytes from a UID FETCH BODY.PEEK[] response, or None when the message is gone."""
    lines = response.lines
    for index, line in enumerate(lines[:-1]):
        if isinstance(line, bytes) and b"BODY[]" in line and isinstance(lines[index + 1], bytearray):
            return bytes(lines[index + 1])
    return None


def _uidvalidity(response: Any) -> int | None:
    for line in response.lines:
        match = _UIDVALIDITY_RE.search(bytes(line)) if isinstance(line, bytes | bytearray) else None
        if match:
            return int(match.group(1))
    return None


def ssl_context(settings: ImapSettings) -> ssl.SSLContext:
    """Verifies the server against [imap] ca_file, or the system store when it is empty."""
    return ssl.create_default_context(cafile=settings.ca_file or None)


class Mailbox:
    """One logged-in connection with the mailbox selected. Every command fails fast with ConnectionLost once the
    socket closes (aioimaplib itself would wait for its timeout, or forever in IDLE)."""

    def __init__(self, settings: ImapSettings) -> None:
        self.settings = settings
        self._lost = asyncio.Event()
        # aioimaplib.IMAP4 with an SSL context is what IMAP4_SSL builds; only IMAP4 takes the connection-lost hook.
        self.client: Any = aioimaplib.IMAP4(
            host=settings.host, port=settings.port, timeout=COMMAND_TIMEOUT,
            ssl_context=ssl_context(settings) if settings.ssl else None, conn_lost_cb=self._connection_lost,
        )
        self.uidvalidity: int | None = None

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost.set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    async def call(self, awaitable: Awaitable[T], *, within: float | None = COMMAND_TIMEOUT) -> T:
        """Await one client operation, unless the connection goes first (ConnectionLost) or it times out."""
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({task, lost}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task.done() and not task.cancelled():
            return task.result()
        if self._lost.is_set():
            raise ConnectionLost(f"connection to {self.settings.host}:{self.settings.port} lost")
        raise TimeoutError(f"no answer from {self.settings.host}:{self.settings.port} within {within} s")

    def has(self, capability: str) -> bool:
        return bool(self.client.has_capability(capability))

    async def open(self) -> None:
        s = self.settings
        await self.call(self.client.wait_hello_from_server())
        _check(await self.call(self.client.login(aioimaplib.quoted(s.username), s.password)), "LOGIN")
        # Capabilities may change at login (RFC 3501 7.2.1): ask again rather than trust the greeting's list.
        await self.call(self.client.protocol.capability())
        for folder in dict.fromkeys(name for name in (s.processed_mailbox, s.failed_mailbox) if name):
            created = await self.call(self.client.create(aioimaplib.quoted(folder)))
            if created.result != "OK" and b"ALREADYEXISTS" not in b" ".join(
                    bytes(line) for line in created.lines if isinstance(line, bytes | bytearray)):
                log.info("imap.create_failed mailbox=%s reply=%s", folder, _text(created))
        selected = _check(await self.call(self.client.select(aioimaplib.quoted(s.mailbox))), f"SELECT {s.mailbox}")
        self.uidvalidity = _uidvalidity(selected)

    async def unseen(self) -> list[int]:
        # NOOP first: Dovecot (and others) report mail that arrived from another session only at a command's end,
        # so a SEARCH straight after IDLE or a sleep could miss it.
        _check(await self.call(self.client.noop()), "NOOP")
        response = await self.call(self.client.uid_search("UNSEEN", "UNDELETED", charset=None))
        return _uids(_check(response, "UID SEARCH"))

    async def fetch(self, uid: int) -> bytes | None:
        response = await self.call(self.client.uid("fetch", str(uid), "(BODY.PEEK[])"), within=None)
        return _literal(_check(response, f"UID FETCH {uid}"))

    async def mark_processed(self, uid: int, *, failed: bool = False) -> None:
        """Move the message out of the way: to the processed (or, shunted, the failed) mailbox, else delete it."""
        target = (self.settings.failed_mailbox if failed else "") or self.settings.processed_mailbox
        if target and self.has("MOVE"):
            _check(await self.call(self.client.uid("move", str(uid), aioimaplib.quoted(target))), f"UID MOVE {uid}")
            return
        if target:
            _check(await self.call(self.client.uid("copy", str(uid), aioimaplib.quoted(target))), f"UID COPY {uid}")
        response = await self.call(self.client.uid("store", str(uid), "+FLAGS.SILENT", PROCESSED_FLAGS))
        _check(response, f"UID STORE {uid}")
        if self.has("UIDPLUS"):  # expunge only this message, not others a person flagged \Deleted
            _check(await self.call(self.client.uid("expunge", str(uid))), f"UID EXPUNGE {uid}")
        else:
            _check(await self.call(self.client.expunge()), "EXPUNGE")

    async def idle(self, seconds: float, wake: asyncio.Event) -> None:
        """IDLE until the server pushes something (new mail, or anything else: a round is cheap), `wake` is set,
        or `seconds` pass; then end IDLE cleanly."""
        queue = self.client.protocol.idle_queue
        while not queue.empty():  # pushes left over from the previous IDLE: the round since has seen them
            queue.get_nowait()
        idle = await self.call(self.client.idle_start(timeout=seconds))
        pushed = asyncio.ensure_future(self.client.wait_server_push(timeout=seconds + COMMAND_TIMEOUT))
        woken = asyncio.ensure_future(wake.wait())
        try:
            await self.call(asyncio.wait({pushed, woken}, return_when=asyncio.FIRST_COMPLETED), within=None)
        finally:
            for waiter in (pushed, woken):
                waiter.cancel()
            if not self.lost:
                self.client.idle_done()
        _check(await self.call(idle), "IDLE")

    async def close(self) -> None:
        """LOGOUT when the connection still works; in any case close the socket and drop aioimaplib's tasks."""
        try:
            if not self.lost and self.client.get_state() in {"AUTH", "SELECTED", "NONAUTH"}:
                await self.call(self.client.logout(), within=5.0)
        except (ImapError, TimeoutError, OSError, aioimaplib.AioImapException):
            pass
        finally:
            self.discard()

    def discard(self) -> None:
        transport = self.client.protocol.transport
        if transport is not None:
            transport.close()
        client_task = self.client._client_task
        if not client_task.done():
            client_task.cancel()
        for task in (*self.client.tasks, *self.client.protocol.tasks):
            task.cancel()


class ImapPoller:
    """Polls [imap]: `start()` runs the loop as a task; `poll_once()` runs one round (through the task when it
    runs, else on a connection of its own) and returns its counts; `wake()` starts a round now."""

    def __init__(self, deps: Deps, *, backoff: Backoff | None = None) -> None:
        self.deps = deps
        self.settings = deps.settings.imap
        self.backoff = backoff or Backoff()
        self.rounds = 0  # completed rounds
        self.connects = 0  # successful logins
        self.idling = False  # in IDLE right now (tests wait for it before delivering)
        self._mailbox: Mailbox | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()  # one round at a time on the one connection
        self._requests: list[asyncio.Future[PollCounts]] = []
        self._retry_at: dict[int, float] = {}  # UID -> loop time before which a failed message is not retried
        self._retry_uidvalidity: int | None = None

    # --- public -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="imap-poller")

    def wake(self) -> None:
        """Start a round now (ends IDLE, a sleep or a reconnection delay)."""
        self._wake.set()

    async def poll_once(self) -> PollCounts:
        if self.running:
            request: asyncio.Future[PollCounts] = asyncio.get_running_loop().create_future()
            self._requests.append(request)
            self.wake()
            return await request
        async with self._lock:
            try:
                return await self._round(await self._connected())
            except BaseException:
                await self._disconnect()
                raise

    async def stop(self) -> None:
        """Let the current message finish (up to STOP_GRACE_SECONDS), then log out."""
        self._stopping = True
        self.wake()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async with self._lock:
            await self._disconnect()

    # --- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        log.info("imap.polling host=%s port=%s mailbox=%s idle=%s", self.settings.host, self.settings.port,
                 self.settings.mailbox, self.settings.use_idle)
        while not self._stopping:
            # poll_once callers waiting now are answered by this round (or its failure)
            requests, self._requests = self._requests, []
            try:
                async with self._lock:
                    mailbox = await self._connected()
                    counts = await self._round(mailbox)
                failures = 0
                _resolve(requests, counts)
                if not self._stopping:
                    await self._between_rounds(mailbox)
            except asyncio.CancelledError:
                _resolve([*requests, *self._requests], None)
                raise
            except Exception as exc:  # the task must outlive any failure: log, reconnect later
                failures += 1
                _resolve(requests, exc)
                delay = self.backoff.delay(failures)
                log.warning("imap.session_failed host=%s port=%s attempt=%d retry_in=%.2fs error=%s: %s",
                            self.settings.host, self.settings.port, failures, delay, type(exc).__name__, exc)
                async with self._lock:
                    await self._disconnect()
                self._wake.clear()  # only a wake() from now on may cut the delay short
                await self._pause(delay)
        _resolve(self._requests, ImapError("the IMAP poller has stopped"))
        self._requests = []

    async def _between_rounds(self, mailbox: Mailbox) -> None:
        interval = max(MIN_INTERVAL, self.settings.poll_interval)
        if self._wake.is_set():
            return
        if self.settings.use_idle and mailbox.has("IDLE"):
            self.idling = True
            try:
                await mailbox.idle(min(interval, IDLE_RENEW_SECONDS), self._wake)
            finally:
                self.idling = False
        else:
            await self._pause(interval)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _connected(self) -> Mailbox:
        if self._mailbox is not None and not self._mailbox.lost:
            return self._mailbox
        await self._disconnect()
        mailbox = Mailbox(self.settings)
        try:
            await mailbox.open()
        except BaseException:
            await mailbox.close()
            raise
        self._mailbox = mailbox
        self.connects += 1
        if mailbox.uidvalidity != self._retry_uidvalidity:  # UIDs of an earlier mailbox generation mean nothing
            self._retry_at.clear()
            self._retry_uidvalidity = mailbox.uidvalidity
        log.info("imap.connected host=%s port=%s mailbox=%s idle=%s move=%s", self.settings.host,
                 self.settings.port, self.settings.mailbox, mailbox.has("IDLE"), mailbox.has("MOVE"))
        return mailbox

    async def _disconnect(self) -> None:
        mailbox, self._mailbox = self._mailbox, None
        if mailbox is not None:
            await mailbox.close()

    # --- one round --------------------------------------------------------------------------------

    async def _round(self, mailbox: Mailbox) -> PollCounts:
        self._wake.clear()
        uids = await mailbox.unseen()
        now = asyncio.get_running_loop().time()
        unseen = set(uids)
        self._retry_at = {uid: at for uid, at in self._retry_at.items() if uid in unseen}
        counts = {"ingested": 0, "rejected": 0, "failed": 0, "deferred": 0, "waiting": 0}
        for uid in uids:
            if self._stopping:
                break
            if self._retry_at.get(uid, 0.0) > now:
                counts["waiting"] += 1
                continue
            raw = await mailbox.fetch(uid)
            if raw is None:  # expunged by someone else since the search
                continue
            try:
                result = await self._ingest(raw)
            except Exception:  # a temporary failure: the message stays unseen
                log.exception("imap.ingest_failed uid=%s", uid)
                counts["failed"] += 1
                self._retry_later(uid)
                continue
            if not result.reply.is_success and not result.reply.is_permanent:
                log.info("imap.deferred uid=%s message_id=%s reply=%s", uid, result.message_id, result.reply)
                counts["deferred"] += 1
                self._retry_later(uid)
                continue
            await self._mark_processed(mailbox, uid, failed=result.shunted)
            self._retry_at.pop(uid, None)
            counts["ingested"] += 1
            if not any(outcome.accepted for outcome in result.outcomes.values()):
                counts["rejected"] += 1
        self.rounds += 1
        result_counts = PollCounts(found=len(uids), **counts)
        if uids:
            log.info("imap.round %s", " ".join(f"{k}={v}" for k, v in asdict(result_counts).items()))
        return result_counts

    async def _ingest(self, raw: bytes) -> IngestResult:
        parsed = await parse(raw, self.deps)
        recipients = recipients_from_headers(parsed, domain=self.deps.settings.site.domain)
        if not recipients:
            log.warning("imap.no_recipient message_id=%s", parsed.message_id)
        return await ingest(raw, envelope_from=sender_from_headers(parsed), recipients=recipients, source=SOURCE,
                            deps=self.deps, parsed=parsed)

    async def _mark_processed(self, mailbox: Mailbox, uid: int, *, failed: bool = False) -> None:
        """The one step after the commit (its own method, so a test can make it fail as a crash would)."""
        await mailbox.mark_processed(uid, failed=failed)

    def _retry_later(self, uid: int) -> None:
        self._retry_at[uid] = asyncio.get_running_loop().time() + max(MIN_INTERVAL, self.settings.poll_interval)


def _resolve(requests: list[asyncio.Future[PollCounts]], result: PollCounts | Exception | None) -> None:
    """Answer poll_once callers: the round's counts, its error, or (None) cancelled."""
    for request in requests:
        if request.done():
            continue
        if result is None:
            request.cancel()
        elif isinstance(result, Exception):
            request.set_exception(result)
        else:
            request.set_result(result)


@asynccontextmanager
async def polling(deps: Deps, *, backoff: Backoff | None = None) -> AsyncIterator[ImapPoller]:
    """The poller for [imap]; its loop runs while the context is open when [imap] enabled is true."""
    poller = ImapPoller(deps, backoff=backoff)
    if deps.settings.imap.enabled:
        poller.start()
    try:
        yield poller
    finally:
        await poller.stop()

