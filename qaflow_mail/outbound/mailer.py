"""Handing one rendered message to the world: a Maildir a person can read, or an SMTP relay.

Every transport has the same small surface (`Mailer`): `send` one message to one recipient, raising
`DeliveryError` that says whether trying again later could help; `close` releases what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mailbox
import os
import re
import ssl
import threading
from contextvars import ContextVar
from pathlib import Path
from typing import Protocol

import aiosmtplib
from aiosmtplib.errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
)

from qaflow_mail.config import OutboundSettings, Settings
from qaflow_mail.outbound.dkim_sign import with_signing

log = logging.getLogger(__name__)

SMTP_TIMEOUT_SECONDS = 60.0

# An address that goes on the wire as <address> unchanged: no display name, comment, quoting or route to parse.
_PLAIN_ADDRESS = re.compile(r'[^\s<>()\[\]\\,;:"@]+@[^\s<>()\[\]\\,;:"@]+')

# The identity of the message being sent (the outbox sets "outbox-<row id>" in the sending task's context, which
# reaches through any wrapping mailer): the Maildir names the file after it, so a row sent twice is written once.
DELIVERY_KEY: ContextVar[str | None] = ContextVar("qaflow_delivery_key", default=None)


class DeliveryError(Exception):
    """The message was not delivered. `permanent`: the receiving side refused it for good (5xx)."""

    def __init__(self, permanent: bool, code: int | None, text: str) -> None:
        super().__init__(f"{code} {text}" if code is not None else text)
        self.permanent = permanent
        self.code = code
        self.text = text


class Mailer(Protocol):
    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
        """Deliver `raw` to `recipient`; return only once the receiving side has taken responsibility."""

    async def close(self) -> None:
        """Release connections or files; the mailer is not used afterwards."""


class MaildirMailer:
    """transport = "outbox": each message becomes one file under `<outbox_dir>/new/`, openable by a person."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._maildir: mailbox.Maildir | None = None
        # mailbox.Maildir names its temporary files with a process-wide counter that is not thread-safe.
        self._lock = threading.Lock()

    def _write(self, envelope_from: str, recipient: str, raw: bytes, key: str | None = None) -> str:
        trace = f"Return-Path: <{envelope_from}>\nX-Envelope-To: <{recipient}>\n".encode()
        if key is not None:
            return self._write_once(key, trace + raw)
        with self._lock:
            if self._maildir is None:
                for part in ("tmp", "new", "cur"):  # also when outbox_dir exists already, empty
                    (self.directory / part).mkdir(parents=True, exist_ok=True)
                self._maildir = mailbox.Maildir(self.directory, factory=None, create=False)
            return self._maildir.add(trace + raw)

    def _write_once(self, key: str, data: bytes) -> str:
        """Write new/<key> unless a file of that name was delivered already (in new/, or read: cur/<key>:2,...).
        Written to tmp/ and fsynced first, then renamed: a reader never sees half a message."""
        for part in ("tmp", "new", "cur"):
            (self.directory / part).mkdir(parents=True, exist_ok=True)
        name = key.replace("/", "_").replace(":", "_")
        delivered = self.directory / "new" / name
        if delivered.exists() or any((self.directory / "cur").glob(f"{name}:*")):
            return name
        staging = self.directory / "tmp" / f"{name}.{os.getpid()}.{threading.get_ident()}"
        with open(staging, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, delivered)
        return name

    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
        if "\n" in envelope_from or "\r" in envelope_from or "\n" in recipient or "\r" in recipient:
            raise DeliveryError(True, None, "line break in an envelope address")
        try:
            key = await asyncio.to_thread(self._write, envelope_from, recipient, raw, DELIVERY_KEY.get())
        except OSError as exc:
            raise DeliveryError(False, None, f"cannot write to the outbox directory: {exc}") from exc
        log.debug("outbox.maildir_written key=%s recipient=%s", key, recipient)

    async def close(self) -> None:
        return None


def _reply_text(message: str) -> str:
    return " ".join(message.split())[:500]


class SmtpMailer:
    """transport = "smtp": aiosmtplib to the relay, reusing up to `concurrency` connections.

    At most `concurrency` messages are in flight at once; each uses one connection on its own, and gives it back
    to the pool when the exchange ended cleanly (including a refusal, after which aiosmtplib sent RSET).
    """

    def __init__(self, outbound: OutboundSettings, *, local_hostname: str) -> None:
        self.settings = outbound
        self.local_hostname = local_hostname
        self._slots = asyncio.Semaphore(max(1, outbound.concurrency))
        self._idle: list[aiosmtplib.SMTP] = []
        self._tls: ssl.SSLContext | None = None
        if outbound.smtp_starttls:
            self._tls = ssl.create_default_context(cafile=outbound.smtp_ca_file or None)

    async def _connect(self) -> aiosmtplib.SMTP:
        cfg = self.settings
        client = aiosmtplib.SMTP(
            hostname=cfg.smtp_host,
            port=cfg.smtp_port,
            local_hostname=self.local_hostname,
            timeout=SMTP_TIMEOUT_SECONDS,
            start_tls=cfg.smtp_starttls,
            tls_context=self._tls,
            username=cfg.smtp_username or None,
            password=cfg.smtp_password or None,
        )
        try:
            await client.connect()
        except SMTPResponseException as exc:
            # Greeting, EHLO, STARTTLS or AUTH refused: our set-up or the relay is at fault, not the recipient,
            # so even a 5xx here must not turn into a bounce for every user.
            client.close()
            raise DeliveryError(False, exc.code, f"relay refused the session: {_reply_text(exc.message)}") from exc
        except (SMTPException, OSError) as exc:
            client.close()
            raise DeliveryError(False, None, f"cannot connect to {cfg.smtp_host}:{cfg.smtp_port}: {exc}") from exc
        return client

    def _take_idle(self) -> aiosmtplib.SMTP | None:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            client.close()
        return None

    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
        async with self._slots:
            pooled = self._take_idle()
            if pooled is not None:
                try:
                    await self._exchange(pooled, envelope_from, recipient, raw)
                    return
                except _BrokenConnection as broken:
                    # Idle connections go stale (relay restarts, idle timeouts): one retry on a fresh one.
                    log.info("outbox.smtp_reconnect reason=%s", broken)
            fresh = await self._connect()
            try:
                await self._exchange(fresh, envelope_from, recipient, raw)
            except _BrokenConnection as broken:
                raise DeliveryError(False, None, f"connection lost: {broken}") from broken

    async def _exchange(self, client: aiosmtplib.SMTP, envelope_from: str, recipient: str, raw: bytes) -> None:
        """One mail transaction; the connection goes back to the pool unless it broke or we were cancelled."""
        try:
            await self._send_on(client, envelope_from, recipient, raw)
        except DeliveryError:
            self._release(client)
            raise
        except BaseException:
            client.close()
            raise
        self._release(client)

    def _release(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.append(client)
        else:
            client.close()

    async def _send_on(self, client: aiosmtplib.SMTP, envelope_from: str, recipient: str, raw: bytes) -> None:
        options = []
        if not raw.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")  # RFC 6152: say so when the body has 8-bit bytes
        if not (envelope_from.isascii() and recipient.isascii()):
            options.append("SMTPUTF8")  # RFC 6531: internationalised addresses
        try:
            size = _wire_size(raw)
            if (size is None or client.is_ehlo_or_helo_needed or not _PLAIN_ADDRESS.fullmatch(envelope_from)
                    or not _PLAIN_ADDRESS.fullmatch(recipient)):
                refused, _ = await client.sendmail(envelope_from, [recipient], raw, mail_options=options)
            else:
                await _plain_transaction(client, envelope_from, recipient, raw, size, options)
                refused = {}
        except SMTPNotSupported as exc:  # an internationalised address the relay cannot carry, now or later
            raise DeliveryError(True, None, f"relay cannot deliver this address: {exc}") from exc
        except SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            raise _refusal(first.code, first.message) from exc
        except (SMTPAuthenticationError, SMTPHeloError, SMTPConnectError) as exc:
            raise DeliveryError(False, getattr(exc, "code", None), f"relay session failed: {exc}") from exc
        except SMTPResponseException as exc:
            if exc.code == 421:  # the relay is closing the channel (RFC 5321 §3.8)
                raise _BrokenConnection(f"421 {_reply_text(exc.message)}") from exc
            if isinstance(exc, SMTPSenderRefused):
                # MAIL FROM refused: about our envelope sender, not the recipient, so never a bounce for them;
                # retried until max_attempts, then failed without a bounce.
                raise DeliveryError(False, exc.code, f"relay refused the sender: {_reply_text(exc.message)}") from exc
            raise _refusal(exc.code, exc.message) from exc
        except ValueError as exc:  # an address aiosmtplib cannot put on the wire
            raise DeliveryError(True, None, f"invalid address: {exc}") from exc
        except (SMTPException, OSError) as exc:
            raise _BrokenConnection(f"{type(exc).__name__}: {exc}") from exc
        if refused:
            code, message = next(iter(refused.values()))
            raise _refusal(code, message)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), timeout=5)
            except (SMTPException, OSError, TimeoutError):
                client.close()


def _wire_size(raw: bytes) -> int | None:
    """The message's size as DATA carries it (RFC 1870 SIZE), when every line already ends in CRLF; else None."""
    line_ends = raw.count(b"\r\n")
    if raw.count(b"\n") != line_ends or raw.count(b"\r") != line_ends:
        return None
    return len(raw) + (0 if raw.endswith(b"\r\n") else 2)


async def _plain_transaction(client: aiosmtplib.SMTP, envelope_from: str, recipient: str, raw: bytes, size: int,
                             options: list[str]) -> None:
    """What `sendmail` does for one plain recipient on a greeted connection, without parsing both addresses
    twice and normalising the message twice more (a third of the sender's CPU per notification): MAIL (with
    SIZE), RCPT, DATA; RSET after a refusal. Raises what `sendmail` raises."""
    encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
    if encoding == "utf-8" and not client.supports_extension("smtputf8"):
        raise SMTPNotSupported("SMTPUTF8 is not supported by this server")
    mail = [b"FROM:<" + envelope_from.encode(encoding) + b">"]
    if client.supports_extension("size"):
        mail.append(b"SIZE=%d" % size)
    mail.extend(option.encode("ascii") for option in options)
    try:
        reply = await client.execute_command(b"MAIL", *mail)
        if reply.code != 250:
            raise SMTPSenderRefused(reply.code, reply.message, envelope_from)
        reply = await client.execute_command(b"RCPT", b"TO:<" + recipient.encode(encoding) + b">")
        if reply.code not in (250, 251):
            raise SMTPRecipientsRefused([SMTPRecipientRefused(reply.code, reply.message, recipient)])
        await client.data(raw)
    except (SMTPResponseException, SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, SMTPException):
            await client.rset()
        raise


class _BrokenConnection(Exception):
    """The connection failed mid-exchange; the caller decides whether a fresh one is worth a try."""


def _refusal(code: int, message: str) -> DeliveryError:
    return DeliveryError(code >= 500, code, _reply_text(message))


def build_mailer(settings: Settings) -> Mailer:
    """The configured transport, DKIM-signing each message when [dkim] has a key (else the MTA signs)."""
    outbound = settings.outbound
    mailer: Mailer
    if outbound.transport == "smtp":
        mailer = SmtpMailer(outbound, local_hostname=settings.smtp.hostname or settings.site.domain)
    else:
        mailer = MaildirMailer(outbound.outbox_dir)
    return with_signing(mailer, settings)
