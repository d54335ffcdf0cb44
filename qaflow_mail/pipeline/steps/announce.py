"""Mail to announce@: only an active admin may announce; a proven announcement is published, any other held for
a confirmation by mail (see services.announcements)."""

from __future__ import annotations

import dataclasses

from qaflow_mail.mail.addresses import Confirm
from qaflow_mail.pipeline import Context, Outcome, accepted, held, rejected
from qaflow_mail.replies import Refusal
from qaflow_mail.services import announcements


async def authorize_announcer(ctx: Context) -> Context | Outcome:
    announcer = await announcements.check_announcer(ctx.session, ctx.deps, raw=ctx.raw, parsed=ctx.parsed,
                                                    now=ctx.now)
    if isinstance(announcer, Refusal):
        return rejected(announcer)
    return dataclasses.replace(ctx, author=announcer.admin, announce_verdict=announcer.verdict)


async def publish_or_hold(ctx: Context) -> Context | Outcome:
    assert ctx.author is not None and ctx.content is not None and ctx.announce_verdict is not None
    verdict = ctx.announce_verdict
    if not verdict.passed:
        kept = await announcements.hold(
            ctx.session, ctx.deps, announcer=announcements.Announcer(ctx.author, verdict), parsed=ctx.parsed,
            content=ctx.content, now=ctx.now,
        )
        if not kept.confirmation_sent:
            return held(f"announcement {kept.announcement.id} held: confirmation rate limit")
        return held(f"announcement {kept.announcement.id} awaits confirmation: {verdict.reason}")
    published = await announcements.publish(
        ctx.session, ctx.deps, author=ctx.author, parsed=ctx.parsed, content=ctx.content, source=ctx.source,
        now=ctx.now, verified=announcements.verified_by(verdict),
    )
    announcements.link_inbound_when_recorded(ctx.session, published.announcement, ctx.parsed.message_id)
    return accepted(published.post.id, reason=f"announcement {published.announcement.id} published "
                                               f"({verdict.reason}), {published.recipients} recipients")


async def apply_confirmation(ctx: Context) -> Context | Outcome:
    """A reply to confirm+<token>@ publishes the held announcement the token names."""
    assert isinstance(ctx.destination, Confirm)
    published = await announcements.confirm(ctx.session, ctx.deps, token=ctx.destination.token, reply=ctx.parsed,
                                            now=ctx.now)
    if isinstance(published, Refusal):
        return rejected(published)
    return accepted(reason=f"announcement {published.announcement.id} confirmed and published as post "
                           f"{published.post.id}, {published.recipients} recipients")
