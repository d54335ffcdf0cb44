"""Attachments within the configured count and size and no programs, otherwise a clear rejection; an attachment
of a type we do not keep, or whose content is not its declared type, is left out and the sender told."""

from __future__ import annotations

import dataclasses

from qaflow_mail.db.models import Source
from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.services.attachment_notices import screen_attachments
from qaflow_mail.services.posts import attachment_refusal


async def check_attachments(ctx: Context) -> Context | Outcome:
    refusal = attachment_refusal(ctx.parsed.attachments, ctx.deps.settings.limits)
    if refusal is not None:
        return rejected(refusal)
    screened = await screen_attachments(ctx.session, ctx.deps, parsed=ctx.parsed, raw=ctx.raw,
                                        envelope_from=ctx.envelope_from, now=ctx.now,
                                        tell_sender=ctx.source is not Source.IMPORT)
    if not screened.dropped:
        return ctx
    return dataclasses.replace(ctx, parsed=dataclasses.replace(ctx.parsed, attachments=screened.kept))
