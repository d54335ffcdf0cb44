"""The ordered step lists, one per kind of destination. The order of work lives here and nowhere else.

A step is named after its module: `qaflow_mail/pipeline/steps/<name>.py` defines `async def <name>(ctx)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from functools import cache

from qaflow_mail.mail.addresses import (
    Announce,
    Bounce,
    Confirm,
    NewTopic,
    NoReply,
    Postmaster,
    Reply,
    Unsubscribe,
)
from qaflow_mail.pipeline import Step

POST_STEPS = (
    "guard_loops",
    "dedupe",
    "rate_limit",
    "resolve_thread",
    "authorize_sender",
    "check_attachments",
    "extract_body",
    "store_post",
    "enqueue_notifications",
    "accept",
)
ANNOUNCE_STEPS = (
    "guard_loops",
    "dedupe",
    "authorize_announcer",
    "check_attachments",
    "extract_body",
    "store_announcement",
)
CONFIRM_STEPS = ("guard_loops", "dedupe", "apply_confirmation")
UNSUBSCRIBE_STEPS = ("dedupe", "apply_unsubscribe")
BOUNCE_STEPS = ("dedupe", "record_bounce")
POSTMASTER_STEPS = ("dedupe", "keep_for_postmaster")
NOREPLY_STEPS = ("guard_loops", "dedupe", "answer_noreply")

ROUTES: dict[type, tuple[str, ...]] = {
    NewTopic: POST_STEPS,
    Reply: POST_STEPS,
    Announce: ANNOUNCE_STEPS,
    Confirm: CONFIRM_STEPS,
    Unsubscribe: UNSUBSCRIBE_STEPS,
    Bounce: BOUNCE_STEPS,
    Postmaster: POSTMASTER_STEPS,
    NoReply: NOREPLY_STEPS,
}

POST_DESTINATIONS = (NewTopic, Reply, Announce)


@cache
def load_step(name: str) -> Step:
    module = importlib.import_module(f"qaflow_mail.pipeline.steps.{name}")
    step: Step = getattr(module, name)
    return step


def has_route(destination: object) -> bool:
    """Whether mail to this destination is handled (<slug>-request@ commands are not yet: refused at RCPT)."""
    return type(destination) in ROUTES


def steps_for(destination: object) -> Sequence[Step]:
    names = ROUTES.get(type(destination))
    if names is None:
        raise LookupError(f"no route for {type(destination).__name__}")
    return [load_step(name) for name in names]
