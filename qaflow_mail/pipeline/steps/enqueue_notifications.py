"""Outbox rows for the category's "each post" subscribers, never the author; written with the post."""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

from qaflow_mail.config import Settings
from qaflow_mail.db.models import IMPORT_SOURCE, Post
from qaflow_mail.outbound.notify import enqueue_post_notifications
from qaflow_mail.outbound.render import TEMPLATES_DIR, Renderer
from qaflow_mail.pipeline import Context, Outcome


@cache
def _renderer_for(templates_dir: Path) -> Renderer:
    return Renderer(templates_dir)


def get_renderer(settings: Settings) -> Renderer:
    """The one Renderer for the site's templates, built on first use and kept (one per templates directory).

    Settings name no templates directory yet, so every site uses the packaged ``templates/``.
    """
    return _renderer_for(TEMPLATES_DIR)


async def enqueue_notifications(ctx: Context) -> Context | Outcome:
    post = ctx.extra.get("post")
    if not isinstance(post, Post):
        raise TypeError("enqueue_notifications runs after store_post, which puts the post in ctx.extra['post']")
    if ctx.source == IMPORT_SOURCE:
        return ctx  # an archive import replays old posts: nobody wants years of mail at once
    count = await enqueue_post_notifications(
        ctx.session, settings=ctx.deps.settings, renderer=get_renderer(ctx.deps.settings), post=post, now=ctx.now
    )
    return dataclasses.replace(ctx, extra={**ctx.extra, "notified": count})
