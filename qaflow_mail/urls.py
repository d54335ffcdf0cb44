"""Where things are: the web links and the token addresses every mail and page points at."""

from __future__ import annotations

from qaflow_mail.config import Settings
from qaflow_mail.mail.addresses import token_address
from qaflow_mail.mail.tokens import TokenKind


def _base(settings: Settings) -> str:
    return settings.site.base_url.rstrip("/")


def topic_url(settings: Settings, topic_id: int) -> str:
    return f"{_base(settings)}/t/{topic_id}"


def category_url(settings: Settings, slug: str) -> str:
    return f"{_base(settings)}/c/{slug}"


def unsubscribe_url(settings: Settings, token: str) -> str:
    return f"{_base(settings)}/unsubscribe/{token}"


def reply_address(settings: Settings, token: str) -> str:
    return token_address(TokenKind.REPLY, token, domain=settings.site.domain)


def unsubscribe_address(settings: Settings, token: str) -> str:
    return token_address(TokenKind.UNSUBSCRIBE, token, domain=settings.site.domain)


def bounce_address(settings: Settings, token: str) -> str:
    """The VERP envelope sender: bounces+<token>@domain."""
    return token_address(TokenKind.BOUNCE, token, domain=settings.site.domain)


def confirm_address(settings: Settings, token: str) -> str:
    return token_address(TokenKind.CONFIRM, token, domain=settings.site.domain)


def moderate_address(settings: Settings, token: str) -> str:
    return token_address(TokenKind.MODERATE, token, domain=settings.site.domain)


def membership_confirm_address(settings: Settings, token: str) -> str:
    """confirm+<token>@: the same address shape as an announcement's confirmation, with a JOIN token."""
    return token_address(TokenKind.JOIN, token, domain=settings.site.domain)


def membership_confirm_url(settings: Settings, token: str) -> str:
    """The confirmation link: its GET shows what it would do, its POST does it (server.web.confirm)."""
    return f"{_base(settings)}/confirm/{token}"


def category_follow_path(slug: str) -> str:
    """Where a page's "Follow by email" form posts (server.web.follow)."""
    return f"/c/{slug}/follow"


def membership_address(settings: Settings, slug: str, action: str) -> str:
    """<slug>-join@, <slug>-leave@ or <slug>-request@."""
    return f"{slug}-{action}@{settings.site.domain}"
