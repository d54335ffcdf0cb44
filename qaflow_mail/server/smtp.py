"""The aiosmtpd edge: RCPT classifies each address, DATA hands the message to the pipeline and maps the reply."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from qaflow_mail.db.models import Source
from qaflow_mail.deps import Deps
from qaflow_mail.mail.addresses import Destination, Reply
from qaflow_mail.pipeline.ingest import IngestResult, classify_recipient, ingest
from qaflow_mail.pipeline.routes import has_route
from qaflow_mail.replies import (
    BAD_TOKEN,
    RCPT_OK,
    TEMPORARY_FAILURE,
    TOO_BIG,
    TOO_MANY_RECIPIENTS,
    UNKNOWN_RECIPIENT,
)
from qaflow_mail.services.threads import reply_token_ids

log = logging.getLogger(__name__)


class EnhancedSizeReplies:
    """aiosmtpd writes its size refusals itself; give them enhanced status codes (RFC 3463) like ours."""

    data_size_limit: int | None

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("552 Error"):
            status = str(TOO_BIG.with_text(f"{TOO_BIG.text} (at most {self.data_size_limit} bytes)"))
        await super().push(status)  # type: ignore[misc]


class GatewaySMTP(EnhancedSizeReplies, SMTP):
    pass


class GatewayHandler:
    source = Source.SMTP

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
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
            log.exception("smtp.rcpt_failed address=%s", address)
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

    async def _ingest(self, envelope: Envelope) -> IngestResult | None:
        """The pipeline's verdict, or None when it failed and the client must retry (a 4xx)."""
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            return await ingest(
                raw, envelope_from=envelope.mail_from or "", recipients=list(envelope.rcpt_tos),
                source=self.source, deps=self.deps, destinations=self._destinations.pop(envelope, None),
            )
        except Exception:
            log.exception("%s.data_failed mail_from=%s", self.source, envelope.mail_from)
            return None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        result = await self._ingest(envelope)
        return str(TEMPORARY_FAILURE if result is None else result.reply)

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp.session_error %s: %s", type(error).__name__, error)
        return str(TEMPORARY_FAILURE)


async def start_listener(
    deps: Deps, *, host: str, port: int, protocol: type[SMTP] = GatewaySMTP, handler: GatewayHandler | None = None
) -> asyncio.Server:
    """An SMTP (or LMTP) server on the running loop, handing every message to the pipeline."""
    loop = asyncio.get_running_loop()
    settings = deps.settings
    hostname = settings.smtp.hostname or settings.site.domain
    chosen = handler or GatewayHandler(deps)

    def factory() -> SMTP:
        return protocol(
            chosen, data_size_limit=settings.smtp.max_message_size, enable_SMTPUTF8=True, decode_data=False,
            hostname=hostname, ident="QAFlow Mail",
        )

    server = await loop.create_server(factory, host=host, port=port)
    log.info("%s.listening host=%s port=%s", chosen.source, host, server.sockets[0].getsockname()[1])
    return server


async def start_smtp(deps: Deps, *, host: str, port: int) -> asyncio.Server:
    return await start_listener(deps, host=host, port=port)
