"""Outbox rows for the category's "each post" subscribers, never the author; written with the post."""

from __future__ import annotations

from qaflow_mail.pipeline import Context, Outcome


async def enqueue_notifications(ctx: Context) -> Context | Outcome:
    return ctx
