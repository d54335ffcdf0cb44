"""Mail to <slug>-request@: each command in its Subject and first lines is done, and one answer lists them."""

from __future__ import annotations

from qaflow_mail.mail.addresses import Request
from qaflow_mail.pipeline import Context, Outcome, accepted, rejected
from qaflow_mail.replies import Refusal
from qaflow_mail.services.membership import commands_by_mail


async def apply_commands(ctx: Context) -> Context | Outcome:
    assert isinstance(ctx.destination, Request)
    results = await commands_by_mail(ctx.session, ctx.deps, slug=ctx.destination.category_slug, parsed=ctx.parsed,
                                     raw=ctx.raw, now=ctx.now)
    if isinstance(results, Refusal):
        return rejected(results)
    return accepted(reason="commands: " + "; ".join(f"{r.line} -> {r.outcome}" for r in results)[:1000])
