"""Mail to postmaster@ (RFC 5321 §4.5.1) is always taken and kept for the admins to read."""

from __future__ import annotations

from qaflow_mail.pipeline import Context, Outcome, accepted


async def keep_for_postmaster(ctx: Context) -> Context | Outcome:
    return accepted(reason="postmaster: kept for the admins")
