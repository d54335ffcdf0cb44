"""Users: register one, find one by any of their addresses, show one, list them, and change their settings.

Many users at once (one address per line) are added by ``services.bulk_import.bulk_add_users``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    BounceRecord,
    CategoryModerator,
    CategorySubscription,
    ConfirmationRequest,
    InboundMessage,
    Outbox,
    User,
    UserAddress,
    UserStatus,
)

RECENT_BOUNCES = 10
ERASED_NAME = "Removed user"


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
    bounces: tuple[BounceRecord, ...] = ()  # the latest first, at most RECENT_BOUNCES
    pending_confirmations: tuple[ConfirmationRequest, ...] = ()  # joins and leaves not confirmed yet, newest first


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
    bounces = await session.scalars(select(BounceRecord).where(BounceRecord.user_id == user.id)
                                    .order_by(BounceRecord.received_at.desc(), BounceRecord.id.desc())
                                    .limit(RECENT_BOUNCES))
    every_address = [user.email, *addresses.all()]
    confirmations = await session.scalars(
        select(ConfirmationRequest).where(ConfirmationRequest.email.in_(every_address),
                                          ConfirmationRequest.confirmed_at.is_(None))
        .order_by(ConfirmationRequest.created_at.desc()))
    return UserDetails(user=user, addresses=tuple(every_address[1:]),
                       subscriptions=tuple(await queries.subscriptions_of(session, user.id)),
                       bounces=tuple(bounces), pending_confirmations=tuple(confirmations))


async def set_timezone(session: AsyncSession, email: str, zone: ZoneInfo | None) -> User:
    """The zone this user's digests are timed in; None means the site's default. UnknownUser when no one has
    ``email``."""
    user = await find_user(session, email)
    user.timezone = None if zone is None else zone.key
    return user


async def set_flags(session: AsyncSession, email: str, *, disabled: bool | None = None, admin: bool | None = None,
                    name: str | None = None) -> User:
    """Disable or enable (an enabled user is active; a bouncing one starts again with a clean score), make or
    unmake an admin, rename; None leaves a setting as it is. UnknownUser when no one has ``email``."""
    user = await find_user(session, email)
    if disabled is True:
        user.status = UserStatus.DISABLED.value
    elif disabled is False and user.status in {UserStatus.DISABLED.value, UserStatus.BOUNCING.value}:
        user.status = UserStatus.ACTIVE.value
        user.bounce_score = 0.0
    if admin is not None:
        user.is_admin = admin
    if name is not None:
        user.display_name = name.strip()
    return user


@dataclass(frozen=True, slots=True)
class ErasedUser:
    user_id: int
    addresses: int  # addresses forgotten (the primary one included)
    subscriptions: int


def erased_address(user_id: int) -> str:
    """What stands in for an erased user's address: unique, and undeliverable by definition (RFC 2606 .invalid)."""
    return f"erased-{user_id}@erased.invalid"


async def erase_user(session: AsyncSession, email: str) -> ErasedUser:
    """A GDPR erasure: the user's addresses, name, subscriptions, bounces, confirmations, mail queued or sent to
    them and the raw copies of their inbound mail are deleted; their posts stay, shown as by "Removed user"; every
    link and token made for them stops working. The user row stays (the posts point at it) under an address no
    one has. UnknownUser when no one has ``email``."""
    user = await find_user(session, email)
    further = list((await session.scalars(select(UserAddress.email).where(UserAddress.user_id == user.id))).all())
    addresses = [user.email, *further]
    subscriptions = len((await session.scalars(
        select(CategorySubscription.id).where(CategorySubscription.user_id == user.id))).all())
    await session.execute(delete(CategorySubscription).where(CategorySubscription.user_id == user.id))
    await session.execute(delete(CategoryModerator).where(CategoryModerator.user_id == user.id))
    await session.execute(delete(BounceRecord).where(BounceRecord.user_id == user.id))
    await session.execute(delete(ConfirmationRequest).where(ConfirmationRequest.email.in_(addresses)))
    await session.execute(delete(Outbox).where(or_(Outbox.user_id == user.id, Outbox.recipient.in_(addresses))))
    await session.execute(
        update(InboundMessage)
        .where(or_(InboundMessage.from_address.in_(addresses), InboundMessage.envelope_from.in_(addresses)))
        .values(raw=b"", from_address="", envelope_from="", reason="erased")
    )
    await session.execute(delete(UserAddress).where(UserAddress.user_id == user.id))
    user.email = erased_address(user.id)
    user.display_name = ERASED_NAME
    user.status = UserStatus.DISABLED.value
    user.is_admin = False
    user.timezone = None
    user.announcements_muted = True
    user.bounce_score = 0.0
    user.token_generation += 1  # voids every unsubscribe link made for them
    return ErasedUser(user_id=user.id, addresses=len(addresses), subscriptions=subscriptions)
