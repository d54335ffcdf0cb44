"""Mail to announce@: only an active admin may announce, and the From address alone proves nothing.

The message is checked here (DKIM aligned with the From domain, or our own MTA's Authentication-Results, and
written for announce@: named in To or Cc under the signature, a fresh signed Date, no repeated headers; see
mail.dkim_check). The verdict travels in ctx.extra["announce_auth"] to store_announcement, which publishes a
verified announcement at once and holds any other for a confirmation by mail. With [announce] require = "dkim"
an unverified announcement is refused instead; with "confirm" every announcement waits for a confirmation.
"""

from __future__ import annotations

import asyncio
import dataclasses

from qaflow_mail.db import queries
from qaflow_mail.db.models import ANNOUNCEMENTS_SLUG, Category, UserStatus
from qaflow_mail.errors import NOT_ADMIN, SmtpReply
from qaflow_mail.mail.dkim_check import AuthMethod, AuthVerdict, verify_announcer
from qaflow_mail.pipeline import Context, Outcome, rejected

AUTH_KEY = "announce_auth"
NOT_VERIFIED = SmtpReply(
    550, "5.7.1", "Announcements must carry a DKIM signature of your domain; send it from your usual mail server"
)


async def announcements_category(ctx: Context) -> Category:
    category = await queries.category_by_slug(ctx.session, ANNOUNCEMENTS_SLUG)
    if category is None:  # a default category, but an admin may have removed it
        category = await queries.add_category(ctx.session, slug=ANNOUNCEMENTS_SLUG, name="Announcements",
                                              allow_strangers=False)
    return category


async def authorize_announcer(ctx: Context) -> Context | Outcome:
    settings = ctx.deps.settings
    address = ctx.parsed.from_address
    user = await queries.user_by_email(ctx.session, address) if address else None
    # No notice by mail: the From may be forged, and a notice would go to whoever it names.
    if user is None or not user.is_admin:
        return rejected(NOT_ADMIN, f"announcement from {address or '(no From)'}, not an admin", notify_sender=False)
    if user.status != UserStatus.ACTIVE:
        return rejected(NOT_ADMIN, f"announcement from admin {address} whose status is {user.status}",
                        notify_sender=False)
    require = settings.announce.require
    if require == "confirm":
        verdict = AuthVerdict(False, AuthMethod.NONE, "[announce] require = confirm: every announcement is confirmed")
    else:
        # DKIM needs DNS (blocking in dkimpy) and RSA arithmetic: keep them off the event loop.
        verdict = await asyncio.to_thread(
            verify_announcer, ctx.raw, ctx.parsed, from_domain=address.rpartition("@")[2],
            announce_address=f"{settings.announce.address}@{settings.site.domain}", now=ctx.now,
            dnsfunc=ctx.deps.dkim_dnsfunc, trusted_authserv_id=settings.announce.trusted_authserv_id,
        )
    if not verdict.passed and require == "dkim":
        return rejected(NOT_VERIFIED, f"announcement from {address} not verified: {verdict.reason}",
                        notify_sender=False)
    return dataclasses.replace(ctx, author=user, category=await announcements_category(ctx),
                               extra={**ctx.extra, AUTH_KEY: verdict})
