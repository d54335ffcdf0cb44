"""Token checks with the site's secrets: the pipeline's view of mail.tokens."""

from __future__ import annotations

from datetime import date

from qaflow_mail.config import Settings
from qaflow_mail.mail.tokens import InvalidToken, TokenKind, verify


def token_secrets(settings: Settings) -> list[str]:
    return [s for s in (settings.tokens.secret, settings.tokens.previous_secret) if s]


def verify_token(token: str, kind: TokenKind, *, settings: Settings, today: date,
                 max_age_days: int | None) -> tuple[int, ...] | None:
    try:
        payload = verify(token, kind=kind, secrets=token_secrets(settings), today=today, max_age_days=max_age_days)
    except InvalidToken:
        return None
    return tuple(payload.ids)


def verify_reply_token(token: str, *, settings: Settings, today: date) -> tuple[int, ...] | None:
    """(post id, user id) of a valid reply token, else None."""
    return verify_token(token, TokenKind.REPLY, settings=settings, today=today,
                        max_age_days=settings.tokens.reply_ttl_days)
