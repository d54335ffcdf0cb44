"""Attachments within the configured count and size, of a type we keep; otherwise a clear rejection."""

from __future__ import annotations

from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.services.posts import attachment_refusal


async def check_attachments(ctx: Context) -> Context | Outcome:
    refusal = attachment_refusal(ctx.parsed.attachments, ctx.deps.settings.limits)
    return ctx if refusal is None else rejected(refusal)
