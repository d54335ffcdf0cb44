"""The confirmation link of a join or leave (``<base_url>/confirm/<token>``), as the unsubscribe link works:

- ``GET`` shows what it would do ("Confirm: join General as al***@example.org") and a button; it changes nothing,
  because link scanners and mail previews fetch every link.
- ``POST`` confirms: the same service call as a reply to the confirm+<token>@ address, under the same rules
  (once only, [subscriptions] confirm_ttl_days); no login, no cookies. The page says what happened.

The token is in the path: it never reaches a log line (the access log is off; only ids are logged) nor any other
page.
"""

from __future__ import annotations

import logging

from aiohttp import web

from qaflow_mail.outbound.render import PageTemplate
from qaflow_mail.replies import MEMBERSHIP_CONFIRMATION_EXPIRED, MEMBERSHIP_CONFIRMATION_USED, Refusal
from qaflow_mail.server.web.common import DEPS
from qaflow_mail.server.web.standalone import standalone_page
from qaflow_mail.services import membership
from qaflow_mail.services.subscriptions import mask_email

log = logging.getLogger(__name__)

CONFIRM_PATH = "/confirm/{token}"


def _refused(request: web.Request, refusal: Refusal) -> web.Response:
    log.info("http.membership_refused reason=%s", refusal.reason)
    if refusal.reply == MEMBERSHIP_CONFIRMATION_USED:
        return standalone_page(request, PageTemplate.MEMBERSHIP_ERROR, {"reason": "used"}, status=409)
    if refusal.reply == MEMBERSHIP_CONFIRMATION_EXPIRED:
        return standalone_page(request, PageTemplate.MEMBERSHIP_ERROR, {"reason": "expired"}, status=410)
    return standalone_page(request, PageTemplate.MEMBERSHIP_ERROR, {"reason": "invalid"}, status=400)


async def confirm_page(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    async with deps.sessions() as session:
        pending = await membership.check_confirmation(session, deps, token=request.match_info["token"],
                                                      now=deps.clock())
    if isinstance(pending, Refusal):
        return _refused(request, pending)
    return standalone_page(request, PageTemplate.MEMBERSHIP_CONFIRM, {
        "action": pending.kind.value, "target": pending.target, "mode": pending.mode,
        "email": mask_email(pending.email), "action_url": request.path,
    })


async def confirm_post(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    await request.read()  # whatever the body says, the POST is the confirmation
    async with deps.sessions() as session, session.begin():
        done = await membership.confirm(session, deps, token=request.match_info["token"], reply=None,
                                        now=deps.clock())
    if isinstance(done, Refusal):
        return _refused(request, done)
    deps.outbox_wakeup()  # the "you now follow" mail
    return standalone_page(request, PageTemplate.MEMBERSHIP_DONE, {
        "action": done.kind.value, "target": done.target, "mode": done.mode or "",
        "email": mask_email(done.user.email), "page": done.page,
    })


def add_confirm_routes(app: web.Application) -> None:
    app.router.add_get(CONFIRM_PATH, confirm_page)
    app.router.add_post(CONFIRM_PATH, confirm_post)
