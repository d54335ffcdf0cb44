"""Where does this message go: a verified reply token, else In-Reply-To then References, else a new topic."""

from __future__ import annotations

import dataclasses

from qaflow_mail.mail.addresses import NewTopic, Reply
from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.replies import Refusal
from qaflow_mail.services.threads import place_by_headers, place_by_token


async def resolve_thread(ctx: Context) -> Context | Outcome:
    destination = ctx.destination
    if isinstance(destination, Reply):
        placement = await place_by_token(ctx.session, ctx.deps.settings, destination.token, today=ctx.now.date())
    elif isinstance(destination, NewTopic):
        placement = await place_by_headers(ctx.session, destination.category_slug, ctx.parsed)
    else:
        raise TypeError(f"resolve_thread cannot route {destination!r}")
    if isinstance(placement, Refusal):
        return rejected(placement)
    return dataclasses.replace(ctx, category=placement.category, parent=placement.parent,
                               token_ids=placement.token_ids, candidates=placement.candidates,
                               known_ancestors=placement.known_ancestors)
