"""The ordered steps for each kind of address. The order of work lives here and nowhere else, and this is the one
module that imports the steps: a route is a tuple of the step functions themselves."""

from __future__ import annotations

from collections.abc import Sequence

from qaflow_mail.db.models import Source
from qaflow_mail.mail.addresses import (
    Announce,
    Bounce,
    Confirm,
    ConfirmMembership,
    Destination,
    Join,
    Leave,
    Moderate,
    NewTopic,
    NoReply,
    Postmaster,
    Reply,
    Request,
    Unsubscribe,
)
from qaflow_mail.pipeline import Step
from qaflow_mail.pipeline.steps.accept import accept
from qaflow_mail.pipeline.steps.announce import apply_confirmation, authorize_announcer, publish_or_hold
from qaflow_mail.pipeline.steps.answer_noreply import answer_noreply
from qaflow_mail.pipeline.steps.apply_commands import apply_commands
from qaflow_mail.pipeline.steps.apply_moderation import apply_moderation
from qaflow_mail.pipeline.steps.apply_reply_command import apply_reply_command
from qaflow_mail.pipeline.steps.apply_unsubscribe import apply_unsubscribe
from qaflow_mail.pipeline.steps.ask_membership import ask_to_join, ask_to_leave
from qaflow_mail.pipeline.steps.authorize_sender import admit_imported_author, authorize_sender
from qaflow_mail.pipeline.steps.check_attachments import check_attachments
from qaflow_mail.pipeline.steps.confirm_membership import confirm_membership
from qaflow_mail.pipeline.steps.dedupe import dedupe
from qaflow_mail.pipeline.steps.extract_body import extract_body
from qaflow_mail.pipeline.steps.guard_loops import guard_imported_loops, guard_loops
from qaflow_mail.pipeline.steps.guard_storms import guard_storms
from qaflow_mail.pipeline.steps.hold_for_moderation import hold_for_moderation
from qaflow_mail.pipeline.steps.keep_for_postmaster import keep_for_postmaster
from qaflow_mail.pipeline.steps.notify_followers import notify_followers
from qaflow_mail.pipeline.steps.rate_limit import rate_limit
from qaflow_mail.pipeline.steps.record_bounce import record_bounce
from qaflow_mail.pipeline.steps.resolve_thread import resolve_thread
from qaflow_mail.pipeline.steps.store_post import store_imported_post, store_post

Route = tuple[Step, ...]

POST: Route = (
    guard_loops, dedupe, rate_limit, resolve_thread, authorize_sender, check_attachments, extract_body,
    apply_reply_command, store_post, guard_storms, hold_for_moderation, notify_followers, accept,
)
# An archive replays old list mail: no rate limit, authors welcome anywhere, the mail's own date, and nobody is
# sent years of notifications at once.
IMPORTED_POST: Route = (
    guard_imported_loops, dedupe, resolve_thread, admit_imported_author, check_attachments, extract_body,
    store_imported_post, accept,
)
ANNOUNCE: Route = (guard_loops, dedupe, authorize_announcer, check_attachments, extract_body, publish_or_hold)
CONFIRM: Route = (guard_loops, dedupe, apply_confirmation)
UNSUBSCRIBE: Route = (dedupe, apply_unsubscribe)
BOUNCE: Route = (dedupe, record_bounce)
POSTMASTER: Route = (dedupe, keep_for_postmaster)
NOREPLY: Route = (guard_loops, dedupe, answer_noreply)
# People joining, leaving and moderating by mail: automatic mail never triggers a confirmation (guard_loops).
JOIN: Route = (guard_loops, dedupe, ask_to_join)
LEAVE: Route = (guard_loops, dedupe, ask_to_leave)
REQUEST: Route = (guard_loops, dedupe, apply_commands)
CONFIRM_MEMBERSHIP: Route = (guard_loops, dedupe, confirm_membership)
MODERATE: Route = (guard_loops, dedupe, apply_moderation)

ROUTES: dict[type, Route] = {
    NewTopic: POST,
    Reply: POST,
    Announce: ANNOUNCE,
    Confirm: CONFIRM,
    Unsubscribe: UNSUBSCRIBE,
    Bounce: BOUNCE,
    Postmaster: POSTMASTER,
    NoReply: NOREPLY,
    Join: JOIN,
    Leave: LEAVE,
    Request: REQUEST,
    ConfirmMembership: CONFIRM_MEMBERSHIP,
    Moderate: MODERATE,
}
IMPORT_ROUTES: dict[type, Route] = {NewTopic: IMPORTED_POST, Reply: IMPORTED_POST}

# Addresses that make a post: one message makes at most one, tried in this order (see ingest).
POST_DESTINATIONS = (Reply, Announce, NewTopic)


def has_route(destination: Destination | None) -> bool:
    """Whether mail to this destination is handled (anything else is refused at RCPT)."""
    return type(destination) in ROUTES


def steps_for(destination: Destination, source: Source) -> Sequence[Step]:
    routes = IMPORT_ROUTES if source is Source.IMPORT else ROUTES
    route = routes.get(type(destination))
    if route is None:
        raise LookupError(f"no {source} route for {type(destination).__name__}")
    return route
