"""Attachments within the configured count and size, of a type we keep; otherwise a clear rejection."""

from __future__ import annotations

import dataclasses

from qaflow_mail.errors import SmtpReply
from qaflow_mail.mail.attachments import check_attachment, safe_filename
from qaflow_mail.pipeline import Context, Outcome, rejected


def _too_big(text: str) -> SmtpReply:
    return SmtpReply(552, "5.3.4", text)


async def check_attachments(ctx: Context) -> Context | Outcome:
    limits = ctx.deps.settings.limits
    attachments = ctx.parsed.attachments
    if len(attachments) > limits.max_attachments:
        return rejected(_too_big(f"Too many attachments: at most {limits.max_attachments} per message"))
    for att in attachments:
        if att.size > limits.max_attachment_size:
            return rejected(_too_big(f"Attachment too large: at most {limits.max_attachment_size} bytes each"))
        # Judge the name that will be stored: invisible characters hidden in the original can mask an extension.
        reason = check_attachment(dataclasses.replace(att, filename=safe_filename(att.filename)), allowed_types=None)
        if reason:
            return rejected(SmtpReply(554, "5.7.1", f"Attachment refused: {reason}"))
    return ctx
