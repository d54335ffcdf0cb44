"""Mail to our VERP address: a bounce scores against the user the token names; nothing here is answered (a bad
token or something that is not a bounce is discarded with 250)."""

from __future__ import annotations

from qaflow_mail.mail.addresses import Bounce
from qaflow_mail.pipeline import Context, Outcome, accepted, discarded
from qaflow_mail.services.bounces import record_verp_bounce


async def record_bounce(ctx: Context) -> Context | Outcome:
    assert isinstance(ctx.destination, Bounce)
    result = await record_verp_bounce(
        ctx.session, ctx.deps.settings, token=ctx.destination.token, parsed=ctx.parsed, raw=ctx.raw,
        null_sender=ctx.envelope_from.strip() in {"", "<>"}, now=ctx.now,
    )
    return accepted(reason=result.reason) if result.recorded else discarded(result.reason)
