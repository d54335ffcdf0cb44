"""Automatic mail (auto-replies, bounces sent to the wrong place, our own mail looping back) never becomes a post."""

from __future__ import annotations

from qaflow_mail.mail.automatic import MailKind, classify_automatic
from qaflow_mail.pipeline import Context, Outcome, discarded


def _guard(ctx: Context, *, list_markers_are_automatic: bool) -> Context | Outcome:
    settings = ctx.deps.settings
    verdict = classify_automatic(
        ctx.parsed, ctx.raw, envelope_from=ctx.envelope_from, our_domain=settings.site.domain,
        our_list_id_suffix=f".{settings.site.domain}", max_received=settings.limits.max_received_headers,
        is_bounce_address=False, list_markers_are_automatic=list_markers_are_automatic,
        our_message_id_salt=settings.site.message_id_salt,
    )
    return ctx if verdict.kind is MailKind.POST else discarded(f"{verdict.kind}: {verdict.reason}")


async def guard_loops(ctx: Context) -> Context | Outcome:
    return _guard(ctx, list_markers_are_automatic=True)


async def guard_imported_loops(ctx: Context) -> Context | Outcome:
    """An archive is list mail: its list headers mark every message, so only true auto-replies are dropped."""
    return _guard(ctx, list_markers_are_automatic=False)
