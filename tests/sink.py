"""A real SMTP server for tests to deliver to: aiosmtpd on a free loopback port, on the test's own event loop.

    async with SmtpSink() as sink:                      # listening on 127.0.0.1:sink.port
        ... deliver to sink.port ...
        messages = await sink.wait_for(3)               # waits (no sleeping) until 3 messages arrived
        sink.fail_with(550, "5.1.1 No such user", only={"bob@example.net"})   # refuse some recipients
        sink.fail_with(451, "4.3.0 Try later")          # refuse every recipient
        sink.accept_all()                               # back to accepting
        await sink.stop(); await sink.start()           # the MTA is down (connection refused), then up again

`messages` holds one `SinkMessage(mail_from, rcpt_tos, raw, mail_options)` per accepted DATA; `refusals` one
`(recipient, code)` per refused RCPT; `connections` counts the connections accepted. Optional: `tls_context`
offers (and requires) STARTTLS, `credentials` requires AUTH (login, password), and `hang_up_next(n)` drops the
connection on the next n MAIL commands, as a relay that went away under an idle client would.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Collection
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from types import TracebackType
from typing import Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass(frozen=True, slots=True)
class SinkMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    mail_options: tuple[str, ...] = ()

    def parsed(self) -> EmailMessage:
        message = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        return message

    @property
    def message_id(self) -> str:
        return str(self.parsed()["Message-ID"] or "")


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.sink._hang_ups > 0:
            self.sink._hang_ups -= 1
            assert server.transport is not None
            cast(asyncio.Transport, server.transport).abort()
            return "421 4.4.2 connection dropped by the test"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        failure = self.sink._failure
        if failure is not None:
            code, text, only = failure
            if only is None or address.lower() in only:
                self.sink.refusals.append((address, code))
                return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        await self.sink._record(SinkMessage(envelope.mail_from or "", tuple(envelope.rcpt_tos), bytes(raw),
                                            tuple(envelope.mail_options)))
        return "250 2.0.0 Queued"


class SmtpSink:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        tls_context: ssl.SSLContext | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self.messages: list[SinkMessage] = []
        self.refusals: list[tuple[str, int]] = []
        self.connections = 0
        self._tls = tls_context
        self._credentials = credentials
        self._failure: tuple[int, str, frozenset[str] | None] | None = None
        self._hang_ups = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[SMTP] = set()
        self._arrived = asyncio.Condition()

    # -- control ---------------------------------------------------------------------------------------------

    def as_relay(self) -> dict[str, object]:
        """The `[outbound]` values that make the gateway deliver to this sink."""
        return {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": self.port}

    def fail_with(self, code: int, text: str, only: Collection[str] | None = None) -> None:
        """Answer RCPT with `code text` for the addresses in `only` (all when None) until `accept_all()`."""
        self._failure = (code, text, None if only is None else frozenset(a.lower() for a in only))

    def accept_all(self) -> None:
        self._failure = None

    def hang_up_next(self, count: int = 1) -> None:
        self._hang_ups = count

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:  # noqa: ASYNC109 (the API)
        """Return the messages once at least `count` have arrived; fail the test after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: len(self.messages) >= count)
        except TimeoutError:
            raise AssertionError(f"sink: {len(self.messages)} message(s) after {timeout}s, expected {count}") from None
        return list(self.messages)

    async def hung_up(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (the API)
        """Return once every client connection has ended, so whatever a client finished sending before it went
        away (a sender killed mid-stream) is among `messages`; fail the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while any(s._handler_coroutine is not None and not s._handler_coroutine.done() for s in self._sessions):
            if time.monotonic() > deadline:
                raise AssertionError(f"sink: a client connection still open after {timeout}s")
            await asyncio.sleep(0.01)  # poll interval of the deadline loop

    # -- life cycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; the first start picks a free port, later starts reuse it."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host=self.host, port=self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection, as a crashed MTA would."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        handlers = []
        for session in list(self._sessions):
            if session.transport is not None:
                cast(asyncio.Transport, session.transport).abort()
            if session._handler_coroutine is not None:
                handlers.append(session._handler_coroutine)
        self._sessions.clear()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- internals -------------------------------------------------------------------------------------------

    def _protocol(self) -> SMTP:
        self.connections += 1
        options: dict[str, Any] = {}
        if self._credentials is not None:
            options.update(authenticator=self._authenticate, auth_required=True,
                           auth_require_tls=self._tls is not None)
        session = SMTP(_Handler(self), hostname="sink.test", ident="test sink", decode_data=False,
                       enable_SMTPUTF8=True, tls_context=self._tls, require_starttls=self._tls is not None,
                       **options)
        self._sessions = {s for s in self._sessions if s._handler_coroutine is None or not s._handler_coroutine.done()}
        self._sessions.add(session)
        return session

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(), auth_data.password.decode()) == self._credentials
        return AuthResult(success=ok, handled=False)

    async def _record(self, message: SinkMessage) -> None:
        async with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()
