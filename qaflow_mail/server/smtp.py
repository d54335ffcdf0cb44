"""The aiosmtpd edge: RCPT classifies each address, DATA hands the message to the pipeline and maps the reply."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from qaflow_mail.errors import BAD_TOKEN, RCPT_OK, TEMPORARY_FAILURE, TOO_MANY_RECIPIENTS, UNKNOWN_RECIPIENT, SmtpReply
from qaflow_mail.mail.addresses import Reply, classify
from qaflow_mail.pipeline.deps import Deps
from qaflow_mail.pipeline.ingest import ingest
from qaflow_mail.pipeline.tokens import verify_reply_token

log = logging.getLogger(__name__)


class GatewaySMTP(SMTP):
    """aiosmtpd's server, with enhanced status codes on the size replies it writes itself (RFC 3463)."""

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("552 Error"):
            status = f"552 5.3.4 Message too big for this forum (at most {self.data_size_limit} bytes)"
        await super().push(status)


class GatewayHandler:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        settings = self.deps.settings
        if len(envelope.rcpt_tos) >= settings.smtp.max_recipients:
            return str(TOO_MANY_RECIPIENTS)
        try:
            local = address.rpartition("@")[0].lower()
            slugs = await self.deps.categories.slugs(must_contain=local)
            destination = classify(address, domain=settings.site.domain, category_slugs=slugs,
                                   announce_local=settings.announce.address)
        except Exception:
            log.exception("smtp.rcpt_failed address=%s", address)
            return str(TEMPORARY_FAILURE)
        if destination is None:
            return str(UNKNOWN_RECIPIENT)
        if isinstance(destination, Reply):
            today = self.deps.clock().date()
            if verify_reply_token(destination.token, settings=settings, today=today) is None:
                return str(BAD_TOKEN)
        envelope.rcpt_tos.append(address)
        return str(RCPT_OK)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            result = await ingest(
                raw, envelope_from=envelope.mail_from or "", recipients=list(envelope.rcpt_tos),
                source="smtp", deps=self.deps,
            )
        except Exception:
            log.exception("smtp.data_failed mail_from=%s", envelope.mail_from)
            return str(TEMPORARY_FAILURE)
        return str(result.reply)

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtp.session_error %s: %s", type(error).__name__, error)
        return str(TEMPORARY_FAILURE)


def reply_line(reply: SmtpReply) -> str:
    return str(reply)


async def start_smtp(deps: Deps, *, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    handler = GatewayHandler(deps)
    settings = deps.settings
    hostname = settings.smtp.hostname or settings.site.domain

    def factory() -> GatewaySMTP:
        return GatewaySMTP(
            handler, data_size_limit=settings.smtp.max_message_size, enable_SMTPUTF8=True, decode_data=False,
            hostname=hostname, ident="QAFlow Mail",
        )

    server = await loop.create_server(factory, host=host, port=port)
    log.info("smtp.listening host=%s port=%s", host, server.sockets[0].getsockname()[1])
    return server
