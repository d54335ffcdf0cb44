"""The ordered step lists, one per kind of destination. The order of work lives here and nowhere else."""

from __future__ import annotations

from collections.abc import Sequence

from qaflow_mail.errors import UNKNOWN_RECIPIENT
from qaflow_mail.mail.addresses import Announce, Postmaster
from qaflow_mail.pipeline import Context, Outcome, Step, rejected
from qaflow_mail.pipeline.steps.accept import accept
from qaflow_mail.pipeline.steps.authorize_sender import authorize_sender
from qaflow_mail.pipeline.steps.check_attachments import check_attachments
from qaflow_mail.pipeline.steps.dedupe import dedupe
from qaflow_mail.pipeline.steps.extract_body import extract_body
from qaflow_mail.pipeline.steps.guard_loops import guard_loops
from qaflow_mail.pipeline.steps.keep_for_postmaster import keep_for_postmaster
from qaflow_mail.pipeline.steps.resolve_thread import resolve_thread
from qaflow_mail.pipeline.steps.store_post import store_post

POST_STEPS: tuple[Step, ...] = (
    guard_loops,
    dedupe,
    resolve_thread,
    authorize_sender,
    check_attachments,
    extract_body,
    store_post,
    accept,
)

POSTMASTER_STEPS: tuple[Step, ...] = (dedupe, keep_for_postmaster)


async def refuse_unhandled(ctx: Context) -> Context | Outcome:
    return rejected(UNKNOWN_RECIPIENT, f"no route for {type(ctx.destination).__name__}", notify_sender=False)


UNHANDLED_STEPS: tuple[Step, ...] = (refuse_unhandled,)


def steps_for_post(destination: object) -> Sequence[Step]:
    if isinstance(destination, Announce):
        return UNHANDLED_STEPS
    return POST_STEPS


def special_steps(destination: object) -> Sequence[Step]:
    if isinstance(destination, Postmaster):
        return POSTMASTER_STEPS
    return UNHANDLED_STEPS
