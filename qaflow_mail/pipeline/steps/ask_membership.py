"""Mail to <slug>-join@ or <slug>-leave@: a confirmation goes to the From address; nothing changes until it is
answered (services.membership)."""

from __future__ import annotations

from qaflow_mail.db.models import ConfirmationKind
from qaflow_mail.mail.addresses import Join, Leave
from qaflow_mail.pipeline import Context, Outcome, accepted, rejected
from qaflow_mail.replies import Refusal
from qaflow_mail.services.membership import ask_by_mail


async def _ask(ctx: Context, slug: str, kind: ConfirmationKind) -> Context | Outcome:
    asked = await ask_by_mail(ctx.session, ctx.deps, slug=slug, kind=kind, parsed=ctx.parsed, now=ctx.now)
    return rejected(asked) if isinstance(asked, Refusal) else accepted(reason=asked.reason)


async def ask_to_join(ctx: Context) -> Context | Outcome:
    assert isinstance(ctx.destination, Join)
    return await _ask(ctx, ctx.destination.category_slug, ConfirmationKind.JOIN)


async def ask_to_leave(ctx: Context) -> Context | Outcome:
    assert isinstance(ctx.destination, Leave)
    return await _ask(ctx, ctx.destination.category_slug, ConfirmationKind.LEAVE)
