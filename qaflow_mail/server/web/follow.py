"""The "Follow by email" form of the category and topic pages: ``POST /c/<slug>/follow`` (a topic page's form
posts to its category) with an address and a mode.

It sends the same double opt-in confirmation as a mail to ``<slug>-join@`` and answers with the same page whatever
the address (a member, a stranger, one at its daily limit, one that cannot receive mail): the form must not tell
anyone who is subscribed. An address that is not one gets the form again with what to correct. Private and
unknown categories are 404, as their pages are. Besides the per-address limits of ``services.membership``, one
client (IP address; IPv6 /64) may post the form ``[http] follow_per_client_per_hour`` times an hour, so the form
cannot be used to mail many addresses either.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from email_validator import EmailNotValidError, validate_email

from qaflow_mail.db.models import SubscriptionMode
from qaflow_mail.mail.request_commands import JOIN_MODES
from qaflow_mail.outbound.render import PageTemplate
from qaflow_mail.server.web.client_limit import ClientLimiter, client_key
from qaflow_mail.server.web.common import DEPS, not_found
from qaflow_mail.server.web.standalone import standalone_page
from qaflow_mail.services import membership, topics
from qaflow_mail.urls import category_follow_path

log = logging.getLogger(__name__)

FOLLOW_LIMITS = web.AppKey("follow_limits", ClientLimiter)
HOUR = 3600.0
MAX_ADDRESS_CHARS = 254  # RFC 5321's limit on a forward path, less its angle brackets

NOT_AN_ADDRESS = "That is not an email address we can write to. Check it and send the form again."
UNKNOWN_MODE = "Choose how often to get mail: every new post, a daily digest or a weekly digest."
TOO_MANY = "Too many requests from your network. Try again in an hour."


def mail_address(typed: str) -> str | None:
    """``typed`` as an address we can send to (ASCII, domain in IDNA form), or None when it is not one.

    email-validator knows the RFC 5321/5322 grammar and the domains that can never receive mail; it does no DNS
    here (the confirmation itself is the test of the address)."""
    if len(typed) > MAX_ADDRESS_CHARS:
        return None
    try:
        valid = validate_email(typed, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return valid.ascii_email or valid.normalized


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


async def follow(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    async with deps.sessions() as session:
        category = await topics.public_category(session, request.match_info["slug"])
    if category is None:
        return not_found(request, "category")
    form = await request.post()
    typed = _field(form, "address")[:MAX_ADDRESS_CHARS + 1]
    mode = _field(form, "mode") or deps.settings.subscriptions.default_mode
    context = {"category": {"name": category.name, "slug": category.slug}, "follow_address": typed,
               "follow_mode": mode, "back_url": f"/c/{category.slug}"}
    if not request.app[FOLLOW_LIMITS].allow(client_key(request.remote)):
        log.warning("http.follow_limited category=%s", category.slug)
        return standalone_page(request, PageTemplate.FOLLOW_FORM, {**context, "message": TOO_MANY}, status=429,
                               headers={"Retry-After": str(int(HOUR))})
    address = mail_address(typed)
    if address is None:
        return standalone_page(request, PageTemplate.FOLLOW_FORM, {**context, "message": NOT_AN_ADDRESS}, status=400)
    if mode not in JOIN_MODES:
        return standalone_page(request, PageTemplate.FOLLOW_FORM, {**context, "message": UNKNOWN_MODE}, status=400)
    async with deps.sessions() as session, session.begin():
        asked = await membership.ask_by_web(session, deps, slug=category.slug, email=address,
                                            mode=SubscriptionMode(mode), now=deps.clock())
    if asked is None:  # turned private a moment ago
        return not_found(request, "category")
    if asked.sent:
        deps.outbox_wakeup()
    log.info("http.follow category=%s sent=%s", category.slug, asked.sent)
    return standalone_page(request, PageTemplate.FOLLOW_SENT, {
        "category": context["category"], "address": address, "back_url": context["back_url"],
    })


def add_follow_routes(app: web.Application) -> None:
    limit = app[DEPS].settings.http.follow_per_client_per_hour
    app[FOLLOW_LIMITS] = ClientLimiter(limit, HOUR)
    app.router.add_post(category_follow_path("{slug:[A-Za-z0-9-]+}"), follow)
