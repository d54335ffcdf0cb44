"""``/t/<id>.mbox``: a topic as an mbox (mboxrd) of its posts as the gateway mails them, so a mail client can
import the whole thread and reply in it: From "<author> via <site>", our Message-IDs, In-Reply-To and References
from the topic's first post down, Reply-To the category's address. No tokens, no personal addresses."""

from __future__ import annotations

import re
from datetime import UTC
from email.message import EmailMessage

from aiohttp import web

from qaflow_mail.config import Settings
from qaflow_mail.mail.addresses import FROM_LOCAL_PART
from qaflow_mail.mail.compose import ListHeaders, compose, list_id_value, to_bytes, via_display_name
from qaflow_mail.server.web.common import DEPS, not_found
from qaflow_mail.server.web.post_body import render_body
from qaflow_mail.server.web.topics import attachment_path, reply_subject
from qaflow_mail.services import topics
from qaflow_mail.services.topics import TopicView, redact_addresses
from qaflow_mail.urls import category_url, topic_url

_FROM_LINE_RE = re.compile(rb"^(>*From )", re.MULTILINE)


def _ancestors(view: TopicView, post_id: int) -> list[int]:
    parents = {post.id: post.parent_id for post in view.posts}
    chain: list[int] = []
    current = parents.get(post_id)
    while current is not None and current in parents and current not in chain:
        chain.append(current)
        current = parents[current]
    first = view.posts[0].id
    chain.reverse()
    if post_id != first and (not chain or chain[0] != first):
        chain.insert(0, first)  # a reply whose parent is not shown still threads under the topic's start
    return chain


def messages(view: TopicView, ids: dict[int, str], settings: Settings) -> list[EmailMessage]:
    """One message per post, as mailed (pure)."""
    domain = settings.site.domain
    address = f"{view.category.slug}@{domain}"
    base = settings.site.base_url.rstrip("/")
    out = []
    for post in view.posts:
        references = [ids[pid] for pid in _ancestors(view, post.id) if pid in ids]
        body = render_body(post.body_html, post.body_text, post.attachments,
                           lambda att: base + attachment_path(att))
        text = redact_addresses(post.body_text).rstrip("\n") + f"\n\n-- \nRead it: {topic_url(settings, view.id)}\n"
        out.append(compose(
            from_name=via_display_name(post.author, settings.site.name),
            from_address=f"{FROM_LOCAL_PART}@{domain}",
            to=address,
            subject=view.subject if post.parent_id is None else reply_subject(view.subject),
            text=text,
            html=str(body.html) if post.body_html else None,
            message_id=ids[post.id],
            in_reply_to=references[-1] if references else None,
            references=references,
            reply_to=address,
            list_headers=ListHeaders(
                list_id=list_id_value(view.category.name, slug=view.category.slug, domain=domain),
                post=address, archive=category_url(settings, view.category.slug),
                unsubscribe_mailto=None, unsubscribe_https=None,
            ),
            date=post.created_at,
        ))
    return out


def mboxrd(items: list[tuple[EmailMessage, str]]) -> bytes:
    """Messages in the mboxrd format: a From_ line each, body lines starting with (>*)From quoted once more."""
    chunks = []
    for message, asctime in items:
        raw = to_bytes(message).replace(b"\r\n", b"\n")
        chunks.append(b"From MAILER-DAEMON " + asctime.encode() + b"\n" + _FROM_LINE_RE.sub(rb">\1", raw)
                      + (b"" if raw.endswith(b"\n") else b"\n") + b"\n")
    return b"".join(chunks)


async def mbox(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        return not_found(request, "topic")
    async with deps.sessions() as session:
        view = await topics.topic_with_posts(session, int(raw))
        if view is None or not view.posts:
            return not_found(request, "topic")
        ids = await topics.reply_message_ids(session, deps.settings, [post.id for post in view.posts])
        await session.commit()
    built = messages(view, ids, deps.settings)
    document = mboxrd([(message, post.created_at.astimezone(UTC).strftime("%a %b %d %H:%M:%S %Y"))
                       for message, post in zip(built, view.posts, strict=True)])
    response = web.Response(body=document, content_type="application/mbox")
    response.headers["Content-Disposition"] = f'attachment; filename="topic-{view.id}.mbox"'
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox; frame-ancestors 'none'"
    return response
