"""Who is writing, and may they post here?"""

from __future__ import annotations

import dataclasses

from qaflow_mail.pipeline import Context, Outcome, rejected
from qaflow_mail.replies import Refusal
from qaflow_mail.services.admission import admit_sender


async def _admit(ctx: Context, *, strangers_welcome: bool) -> Context | Outcome:
    user = await admit_sender(
        ctx.session, ctx.deps, address=ctx.parsed.from_address, display_name=ctx.parsed.from_name,
        category=ctx.category, strangers_welcome=strangers_welcome,
        token_user_id=ctx.token_ids[1] if ctx.token_ids else None, now=ctx.now,
    )
    return rejected(user) if isinstance(user, Refusal) else dataclasses.replace(ctx, author=user)


async def authorize_sender(ctx: Context) -> Context | Outcome:
    """Unknown senders become staged users only where the category welcomes strangers."""
    return await _admit(ctx, strangers_welcome=ctx.category is not None and ctx.category.allow_strangers)


async def admit_imported_author(ctx: Context) -> Context | Outcome:
    """An archive import keeps every author's posts: unknown authors become staged users in any category."""
    return await _admit(ctx, strangers_welcome=True)
