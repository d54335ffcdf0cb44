"""The aiosmtpd edge: RCPT classifies each address, DATA hands the message to the pipeline and maps the reply.

Connections are bounded: in all and per client address, in commands that move no mail, and in idle time (which
DATA bytes arriving reset, so a slow but progressing upload is never cut). A message gets its answer within a
bounded time even when the database hangs.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from typing import IO, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from qaflow_mail.db.models import Source
from qaflow_mail.deps import Deps
from qaflow_mail.mail.addresses import Destination, Reply
from qaflow_mail.pipeline.ingest import IngestResult, classify_recipient, ingest, message_deadline
from qaflow_mail.pipeline.routes import has_route
from qaflow_mail.replies import (
    BAD_TOKEN,
    IDLE_TIMEOUT,
    MAIL_BACKLOG,
    QUEUED,
    RCPT_OK,
    STORAGE_FULL,
    TEMPORARY_FAILURE,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_JUNK_COMMANDS,
    TOO_MANY_RECIPIENTS,
    UNKNOWN_RECIPIENT,
    SmtpReply,
    too_big,
)
from qaflow_mail.server.accept_policy import InlineLoad, answers_inline
from qaflow_mail.server.data_spool import SpooledData
from qaflow_mail.server.inbound_queue import InboundQueue, QueueFull
from qaflow_mail.server.latency import node_label, observed
from qaflow_mail.server.log_guard import guard_logs, redact_tokens
from qaflow_mail.server.mail_budget import MailBudget
from qaflow_mail.services.threads import reply_token_ids

log = logging.getLogger(__name__)


class EnhancedSizeReplies:
    """aiosmtpd writes its size refusals itself; give them enhanced status codes (RFC 3463) like ours."""

    data_size_limit: int | None

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("552 Error"):
            status = str(too_big(self.data_size_limit))
        await super().push(status)  # type: ignore[misc]


# Commands that move no mail; each may be sent [smtp] junk_command_limit times per connection. Every other command
# gets a budget far above what any real sender needs on one connection (aiosmtpd counts per command).
JUNK_COMMANDS = ("NOOP", "RSET", "VRFY", "EXPN", "HELP")
_OTHER_COMMANDS_PER_CONNECTION = 100_000


class ConnectionLimits:
    """Open connections in all and per client address, shared by every connection of one listener."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open: Counter[str] = Counter()

    def admit(self, client: str) -> SmtpReply | None:
        """Count the connection in (None), or the refusal to send it."""
        if sum(self.open.values()) >= self.total or self.open[client] >= self.per_client:
            return TOO_MANY_CONNECTIONS
        self.open[client] += 1
        return None

    def release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


class GuardedSession:
    """Connection caps, and an idle timeout that DATA bytes arriving reset (aiosmtpd resets it only on commands,
    so an upload slower than the timeout was cut). Set `connection_limits` before the connection is made."""

    connection_limits: ConnectionLimits | None = None
    _client: str | None = None
    _receiving_data = False
    _refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.connection_limits is not None and self._client is None and not self._refused:
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            refusal = self.connection_limits.admit(client)
            if refusal is not None:
                self._refused = True
                log.warning("smtp.connection_refused client=%s reason=%s", client, refusal.text)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(f"{refusal}\r\n".encode())
                transport.close()
                return
            self._client = client
        super().connection_made(transport)  # type: ignore[misc]

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self.connection_limits is not None and self._client is not None:
            self.connection_limits.release(self._client)
            self._client = None
        super().connection_lost(error)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._receiving_data:
            self._reset_timeout()  # type: ignore[attr-defined]

    async def smtp_DATA(self, arg: str) -> None:
        self._receiving_data = True
        try:
            await super().smtp_DATA(arg)  # type: ignore[misc]
        finally:
            self._receiving_data = False

    def _timeout_cb(self) -> None:
        transport = getattr(self, "transport", None)
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(f"{IDLE_TIMEOUT}\r\n".encode())
        super()._timeout_cb()  # type: ignore[misc]

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("421 4.7.0") and text.endswith("sent too many times"):
            status = str(TOO_MANY_JUNK_COMMANDS)
        await super().push(status)  # type: ignore[misc]


class GatewaySMTP(GuardedSession, SpooledData, EnhancedSizeReplies, SMTP):
    """RFC 5321 caps a line at 1,000 bytes, yet real clients send longer ones (a long pasted line, an inline image
    placeholder): like Postfix, DATA takes them up to the message size (SpooledData reads them in pieces)."""


def _content(envelope: Envelope) -> bytes:
    """The message as a listener without a spool received it."""
    content = envelope.original_content or b""
    return content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content


class GatewayHandler:
    source = Source.SMTP

    def __init__(self, deps: Deps, budget: MailBudget | None = None, load: InlineLoad | None = None) -> None:
        self.deps = deps
        self.budget = budget or MailBudget(deps.settings.smtp.max_bytes_in_flight)
        self.load = load or InlineLoad()
        smtp = deps.settings.smtp
        self.queue = InboundQueue(smtp.queue_dir) if smtp.accept != "inline" else None
        # Each accepted RCPT's destination, so DATA does not classify the addresses again.
        self._destinations: weakref.WeakKeyDictionary[Envelope, dict[str, Destination]] = weakref.WeakKeyDictionary()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        settings = self.deps.settings
        if len(envelope.rcpt_tos) >= settings.smtp.max_recipients:
            return str(TOO_MANY_RECIPIENTS)
        try:
            destination = await classify_recipient(self.deps, address)
        except Exception:
            log.exception("smtp.rcpt_failed address=%s", redact_tokens(address))
            return str(TEMPORARY_FAILURE)
        if destination is None or not has_route(destination):
            return str(UNKNOWN_RECIPIENT)
        if isinstance(destination, Reply):
            today = self.deps.clock().date()
            if reply_token_ids(settings, destination.token, today=today) is None:
                return str(BAD_TOKEN)
        envelope.rcpt_tos.append(address)
        self._destinations.setdefault(envelope, {})[address] = destination
        return str(RCPT_OK)

    async def _ingest(self, server: SMTP, envelope: Envelope) -> IngestResult | SmtpReply:
        """The pipeline's verdict, or the temporary reply when the client must try again: no room within
        [smtp] max_bytes_in_flight (452), or the pipeline failed (451)."""
        spool = server if isinstance(server, SpooledData) and server.spool is not None else None
        size = spool.spool_size if spool is not None else len(envelope.original_content or b"")
        smtp = self.deps.settings.smtp
        if self.queue is not None and not answers_inline(
            smtp.accept, inline_running=self.load.running, queue_waiting=self.queue.has_waiting, size=size,
        ):
            # Copied from its spool to the queue file, a queued message takes no room in memory.
            message = spool.spool if spool is not None and spool.spool is not None else _content(envelope)
            return await self._enqueue(self.queue, message, size, envelope)
        async with self.budget.hold(size, wait=smtp.in_flight_wait) as room:
            if not room:
                log.warning("%s.backlog size=%d in_flight=%d", self.source, size, self.budget.used)
                return MAIL_BACKLOG
            if spool is not None:
                # A spool past its threshold is a file: read it off the loop.
                big = spool.spool_size > spool.spool_threshold
                raw = await asyncio.to_thread(spool.read_spool) if big else spool.read_spool()
            else:
                raw = _content(envelope)
            self.load.running += 1
            try:
                return await self._run_pipeline(raw, envelope)
            finally:
                self.load.running -= 1

    async def _enqueue(self, queue: InboundQueue, message: bytes | IO[bytes], size: int,
                       envelope: Envelope) -> SmtpReply:
        """[smtp] accept = "queue" (or "auto" while the pipeline is busy): the message on disk, fsynced, is all a
        250 waits for."""
        self._destinations.pop(envelope, None)
        try:
            name = await asyncio.to_thread(queue.put, message, mail_from=envelope.mail_from or "",
                                           rcpt_tos=list(envelope.rcpt_tos), source=self.source.value,
                                           keep_free=self.deps.settings.smtp.queue_min_free)
        except QueueFull as full:
            log.warning("%s.queue_full size=%d %s", self.source, size, full)
            return STORAGE_FULL
        except OSError:
            log.exception("%s.queue_failed mail_from=%s", self.source, envelope.mail_from)
            return TEMPORARY_FAILURE
        log.info("%s.queued name=%s size=%d rcpts=%d", self.source, name, size, len(envelope.rcpt_tos))
        return QUEUED

    async def _run_pipeline(self, raw: bytes, envelope: Envelope) -> IngestResult | SmtpReply:
        deadline = message_deadline(self.deps.settings)
        try:
            with observed(self.source.value, node_label(self.deps.settings.site.node_name)):
                async with asyncio.timeout(deadline):
                    return await ingest(
                        raw, envelope_from=envelope.mail_from or "", recipients=list(envelope.rcpt_tos),
                        source=self.source, deps=self.deps, destinations=self._destinations.pop(envelope, None),
                    )
        except Exception:
            log.exception("%s.data_failed mail_from=%s", self.source, envelope.mail_from)
            return TEMPORARY_FAILURE

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        result = await self._ingest(server, envelope)
        return str(result if isinstance(result, SmtpReply) else result.reply)

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp.session_error %s: %s", type(error).__name__, error)
        return str(TEMPORARY_FAILURE)


async def start_listener(
    deps: Deps, *, host: str, port: int, protocol: type[SMTP] = GatewaySMTP, handler: GatewayHandler | None = None,
) -> asyncio.Server:
    """An SMTP (or LMTP) server on the running loop, handing every message to the pipeline (within the handler's
    MailBudget: give listeners one handler budget to share it)."""
    loop = asyncio.get_running_loop()
    settings = deps.settings
    smtp = settings.smtp
    hostname = smtp.hostname or settings.site.domain
    chosen = handler or GatewayHandler(deps)
    limits = ConnectionLimits(smtp.max_connections, smtp.max_connections_per_client)
    call_limits = {"*": _OTHER_COMMANDS_PER_CONNECTION, **dict.fromkeys(JUNK_COMMANDS, smtp.junk_command_limit)}
    guard_logs()

    def factory() -> SMTP:
        session = protocol(
            chosen, data_size_limit=smtp.max_message_size, enable_SMTPUTF8=True, decode_data=False,
            hostname=hostname, ident="QAFlow Mail", timeout=smtp.idle_timeout, command_call_limit=call_limits,
        )
        if isinstance(session, GuardedSession):
            session.connection_limits = limits
        if isinstance(session, SpooledData):
            session.spool_threshold = smtp.spool_threshold
            session.spool_dir = smtp.spool_dir or None
        return session

    server = await loop.create_server(factory, host=host, port=port)
    log.info("%s.listening host=%s port=%s", chosen.source, host, server.sockets[0].getsockname()[1])
    return server


async def start_smtp(
    deps: Deps, *, host: str, port: int, budget: MailBudget | None = None, load: InlineLoad | None = None,
) -> asyncio.Server:
    return await start_listener(deps, host=host, port=port, handler=GatewayHandler(deps, budget, load))
