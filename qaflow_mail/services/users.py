"""Users: register one, find one by any of their addresses, show one, list them, and change their settings.

Many users at once (one address per line) are added by ``services.bulk_import.bulk_add_users``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import CategorySubscription, User, UserAddress


class InvalidEmail(ValueError):
    """The address given cannot be a user's address."""

    def __init__(self, email: str) -> None:
        super().__init__(f"invalid email address {email!r}")
        self.email = email


class UserExists(ValueError):
    """A user already has this address."""

    def __init__(self, email: str) -> None:
        super().__init__(f"user {email} exists already")
        self.email = email


class UnknownUser(LookupError):
    """No user has this address, as primary or further address."""

    def __init__(self, email: str) -> None:
        super().__init__(f"no user {email!r}")
        self.email = email  # normalised (stripped, lowercased)


@dataclass(frozen=True, slots=True)
class UserDetails:
    user: User
    addresses: tuple[str, ...]  # further addresses, sorted
    subscriptions: tuple[tuple[CategorySubscription, str], ...]  # with the category's slug, by slug


def new_user_address(email: str) -> str:
    """``email`` normalised as a user's address is stored; InvalidEmail when it cannot be one."""
    address = queries.normalize_email(email)
    if "@" not in address or any(c.isspace() for c in address):
        raise InvalidEmail(email)
    return address


async def add_user(
    session: AsyncSession, *, email: str, name: str = "", admin: bool = False, now: datetime
) -> User:
    """Register an active user; InvalidEmail or UserExists when that cannot be."""
    address = new_user_address(email)
    if await queries.user_by_email(session, address):
        raise UserExists(address)
    return await queries.add_user(session, email=address, display_name=name, is_admin=admin, now=now)


async def find_user(session: AsyncSession, email: str) -> User:
    """The user behind ``email`` (primary or further address); UnknownUser otherwise."""
    user = await queries.user_by_email(session, email)
    if user is None:
        raise UnknownUser(queries.normalize_email(email))
    return user


async def list_users(session: AsyncSession) -> Sequence[User]:
    return await queries.list_users(session)


async def user_details(session: AsyncSession, email: str) -> UserDetails:
    """The user behind ``email``, their further addresses and their subscriptions; UnknownUser otherwise."""
    user = await find_user(session, email)
    addresses = await session.scalars(
        select(UserAddress.email).where(UserAddress.user_id == user.id).order_by(UserAddress.email)
    )
    return UserDetails(user=user, addresses=tuple(addresses),
                       subscriptions=tuple(await queries.subscriptions_of(session, user.id)))


async def set_timezone(session: AsyncSession, email: str, zone: ZoneInfo | None) -> User:
    """The zone this user's digests are timed in; None means the site's default. UnknownUser when no one has
    ``email``."""
    user = await find_user(session, email)
    user.timezone = None if zone is None else zone.key
    return user
