"""``/a/<attachment id>/<file name>``: an attachment's bytes. Raster images are shown inline; everything else
(SVG, HTML, PDF, archives, anything unknown) is a download, and nothing is ever sniffed into something else."""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from qaflow_mail.server.web.common import DEPS, not_found
from qaflow_mail.server.web.post_body import RASTER_TYPES
from qaflow_mail.services import topics

DOWNLOAD_TYPE = "application/octet-stream"
_MIME_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")


def content_disposition(filename: str, *, inline: bool) -> str:
    """RFC 6266: an ASCII fallback name and the real one in RFC 5987 encoding."""
    fallback = "".join(ch if ch.isascii() and ch.isprintable() and ch not in '"\\;' else "_" for ch in filename)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{fallback or 'attachment'}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def attachment(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        return not_found(request, "attachment")
    async with request.app[DEPS].sessions() as session:
        found = await topics.attachment_file(session, int(raw))
    if found is None:
        return not_found(request, "attachment")
    content_type = found.content_type.lower().strip()
    if not _MIME_TYPE_RE.fullmatch(content_type):
        content_type = DOWNLOAD_TYPE
    inline = content_type in RASTER_TYPES
    response = web.Response(body=found.content, content_type=content_type)
    response.headers["Content-Disposition"] = content_disposition(found.filename, inline=inline)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox; frame-ancestors 'none'"
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response
