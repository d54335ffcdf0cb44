"""The LMTP edge (RFC 2033): an MTA such as Postfix hands mail over and gets one reply per recipient, so one
refused recipient never makes it retry (or bounce) the others. Same pipeline as SMTP."""

from __future__ import annotations

import asyncio

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from qaflow_mail.db.models import Source
from qaflow_mail.deps import Deps
from qaflow_mail.replies import SmtpReply
from qaflow_mail.server.accept_policy import InlineLoad
from qaflow_mail.server.data_spool import SpooledData
from qaflow_mail.server.mail_budget import MailBudget
from qaflow_mail.server.smtp import EnhancedSizeReplies, GatewayHandler, GuardedSession, start_listener


class GatewayLMTP(GuardedSession, SpooledData, EnhancedSizeReplies, LMTP):
    pass


class LmtpHandler(GatewayHandler):
    source = Source.LMTP

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        result = await self._ingest(server, envelope)
        # One line per accepted RCPT, in RCPT order; aiosmtpd writes the joined lines as they are.
        if isinstance(result, SmtpReply):
            return "\r\n".join(str(result) for _ in envelope.rcpt_tos)
        return "\r\n".join(str(result.outcomes[rcpt].reply) for rcpt in envelope.rcpt_tos)


async def start_lmtp(
    deps: Deps, *, host: str, port: int, budget: MailBudget | None = None, load: InlineLoad | None = None,
) -> asyncio.Server:
    return await start_listener(deps, host=host, port=port, protocol=GatewayLMTP,
                                handler=LmtpHandler(deps, budget, load))
