"""A reply to confirm+<token>@ where the token is a join or leave confirmation: it is done now."""

from __future__ import annotations

from qaflow_mail.mail.addresses import ConfirmMembership
from qaflow_mail.pipeline import Context, Outcome, accepted, rejected
from qaflow_mail.replies import Refusal
from qaflow_mail.services.membership import confirm


async def confirm_membership(ctx: Context) -> Context | Outcome:
    assert isinstance(ctx.destination, ConfirmMembership)
    done = await confirm(ctx.session, ctx.deps, token=ctx.destination.token, reply=ctx.parsed, now=ctx.now)
    if isinstance(done, Refusal):
        return rejected(done)
    return accepted(reason=f"user {done.user.id} confirmed {done.kind.value} {done.target}")
