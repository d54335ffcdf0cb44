"""Mail the site itself writes to one person (confirmations, rejection notices): one shape for all of them."""

from __future__ import annotations

from datetime import datetime

from qaflow_mail.config import Settings
from qaflow_mail.mail.addresses import FROM_LOCAL_PART
from qaflow_mail.mail.compose import compose, to_bytes
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.outbound.render import Rendered
from qaflow_mail.urls import bounce_address

# An answer to a message (RFC 3834): auto-responders must not answer it in turn.
NOTICE_HEADERS = {"Auto-Submitted": "auto-replied", "Precedence": "bulk"}


def site_notice(
    settings: Settings,
    *,
    to: str,
    rendered: Rendered,
    message_id: str,
    in_reply_to: str | None,
    now: datetime,
    reply_to: str | None = None,
) -> bytes:
    """From the site's notifications address, no list headers, marked auto-replied; the wire bytes."""
    message = compose(
        from_name=settings.site.name,
        from_address=f"{FROM_LOCAL_PART}@{settings.site.domain}",
        to=to,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=(),
        reply_to=reply_to,
        list_headers=None,
        extra_headers=NOTICE_HEADERS,
        date=now,
    )
    return to_bytes(message)


def user_bounce_address(settings: Settings, user_id: int, *, now: datetime) -> str:
    """The VERP envelope sender for site mail to a registered user."""
    token = sign(TokenKind.BOUNCE, (user_id, 0), secret=settings.tokens.secret, issued=now.date())
    return bounce_address(settings, token)
