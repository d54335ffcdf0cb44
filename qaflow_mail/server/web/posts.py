"""Links to one post: ``/p/<post id>`` and ``/m/<message-id>`` redirect to it on its topic page (``#p<id>``)."""

from __future__ import annotations

from aiohttp import web

from qaflow_mail.server.web.common import DEPS, not_found
from qaflow_mail.services import topics

MAX_MESSAGE_ID_CHARS = 998


def _to_post(topic_id: int, post_id: int) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": f"/t/{topic_id}#p{post_id}"})


async def post(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        return not_found(request, "post")
    async with request.app[DEPS].sessions() as session:
        topic_id = await topics.visible_post_topic(session, int(raw))
    if topic_id is None:
        return not_found(request, "post")
    return _to_post(topic_id, int(raw))


async def by_message_id(request: web.Request) -> web.StreamResponse:
    """The post made by the mail with this Message-ID, or the post our notification with this Message-ID was
    about: whichever copy of a mail someone holds, its Message-ID leads to the post."""
    message_id = request.match_info["message_id"]
    if not message_id or len(message_id) > MAX_MESSAGE_ID_CHARS:
        return not_found(request, "message")
    async with request.app[DEPS].sessions() as session:
        found = await topics.post_by_message_id(session, message_id)
    if found is None:
        return not_found(request, "message")
    return _to_post(*found)
