"""Many users or subscriptions at once, from one address per line, as when a mailing list moves over.

Lookups and inserts go by chunks of addresses (one query per chunk, multi-row INSERTs), never one query per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import getaddresses
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import Category, CategorySubscription, SubscriptionMode, User, UserAddress, UserStatus

CHUNK = 500  # addresses per lookup / insert: far below every backend's bound-parameter limit
MAX_EMAIL_LENGTH = 320
MAX_LOCAL_PART = 64
MAX_NAME_LENGTH = 200

# A plain ASCII addr-spec: what our outbound mail can address (compose refuses anything else).
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# "addr" or "Name <addr>" with nothing that needs RFC 5322 parsing (quotes, comments, groups, several addresses).
_SIMPLE_LINE_RE = re.compile(
    r'(?P<bare>[^\s<>"(),;:\[\]\\]+)|(?P<name>[^<>"(),;:@\[\]\\]*?)\s*<(?P<addr>[^\s<>"(),;:\[\]\\]+)>'
)
_DOMAIN_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}")


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int  # 1-based line number in the input
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class BulkReport:
    lines: int = 0  # lines read, blank and comment lines included
    addresses: int = 0  # distinct valid addresses
    users_created: int = 0
    users_existing: int = 0
    subscriptions_created: int = 0
    subscriptions_existing: int = 0  # kept as they were, whatever their mode
    duplicates: int = 0  # an address given again later in the input
    bad: tuple[BadLine, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "addresses": self.addresses,
            "users_created": self.users_created,
            "users_existing": self.users_existing,
            "subscriptions_created": self.subscriptions_created,
            "subscriptions_existing": self.subscriptions_existing,
            "duplicates": self.duplicates,
            "bad": [{"line": b.line, "text": b.text, "reason": b.reason} for b in self.bad],
        }


@dataclass(frozen=True, slots=True)
class ParsedLine:
    email: str  # lowercased
    name: str


def parse_address_line(text: str) -> ParsedLine | str | None:
    """One input line: None for a blank or ``#`` comment line, a reason string for a bad line, else the address.

    ``addr``, ``<addr>``, ``Name <addr>`` and ``"Last, First" <addr>`` are accepted (email.utils parsing).
    """
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    simple = _SIMPLE_LINE_RE.fullmatch(stripped)
    if simple is not None:  # the common shapes, without the cost of the full RFC 5322 parser
        name, address = (simple.group("name") or "").strip(), simple.group("addr") or simple.group("bare")
    else:
        found = [(name, addr) for name, addr in getaddresses([stripped]) if name or addr]
        if len(found) != 1:
            return "more than one address on the line" if len(found) > 1 else "no address found"
        name, address = found[0]
        address = address.strip()
    reason = address_problem(address)
    if reason is not None:
        return reason
    return ParsedLine(email=address.lower(), name=" ".join(_decoded(name).split())[:MAX_NAME_LENGTH])


def _decoded(name: str) -> str:
    """A display name with RFC 2047 encoded words decoded, as lists exported from mail headers may hold."""
    if "=?" not in name:
        return name
    try:
        return str(make_header(decode_header(name)))
    except (HeaderParseError, LookupError, UnicodeDecodeError):
        return name


def address_problem(address: str) -> str | None:
    """Why ``address`` cannot be a subscriber's address, or None when it can."""
    if not address:
        return "no address found"
    if not address.isascii():
        return "non-ASCII addresses are not supported"
    if len(address) > MAX_EMAIL_LENGTH:
        return f"address longer than {MAX_EMAIL_LENGTH} characters"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "not an email address (user@domain)"
    if len(local) > MAX_LOCAL_PART or not _LOCAL_RE.fullmatch(local):
        return "invalid local part (before the @)"
    if not _DOMAIN_RE.fullmatch(domain):
        return "invalid domain (after the @)"
    return None


def _parse_lines(lines: Iterable[str]) -> tuple[int, list[tuple[int, ParsedLine]], list[BadLine], int]:
    """(lines read, first occurrence of each valid address with its line number, bad lines, duplicates)."""
    seen: set[str] = set()
    good: list[tuple[int, ParsedLine]] = []
    bad: list[BadLine] = []
    duplicates = 0
    count = 0
    for number, raw in enumerate(lines, start=1):
        count = number
        parsed = parse_address_line(raw)
        if parsed is None:
            continue
        if isinstance(parsed, str):
            bad.append(BadLine(line=number, text=raw.strip()[:200], reason=parsed))
            continue
        if parsed.email in seen:
            duplicates += 1
            continue
        seen.add(parsed.email)
        good.append((number, parsed))
    return count, good, bad, duplicates


async def _prefer_custom_plans(session: AsyncSession) -> None:
    """On PostgreSQL, plan each chunk's lookup for the table as it is now, for the rest of this transaction.

    The lookups are prepared statements (asyncpg); after a few runs PostgreSQL may switch to a generic plan
    made while the table was still small (a sequential scan comparing every row with the whole IN list), and
    keep it while the import grows the table: 100,000 lines then take minutes instead of seconds.
    """
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


async def _known_users(session: AsyncSession, emails: Sequence[str]) -> dict[str, int]:
    """Map each address (primary or a further address of a user) to its user id, in two queries."""
    rows = await session.execute(select(User.email, User.id).where(User.email.in_(emails)))
    found = {email: user_id for email, user_id in rows}
    missing = [e for e in emails if e not in found]
    if missing:
        extra = await session.execute(
            select(UserAddress.email, UserAddress.user_id).where(UserAddress.email.in_(missing))
        )
        found.update({email: user_id for email, user_id in extra})
    return found


async def _ensure_users(
    session: AsyncSession, chunk: Sequence[ParsedLine], now: datetime
) -> tuple[dict[str, int], int]:
    """User ids for every address of ``chunk``, creating the missing users. Returns (ids, how many created)."""
    emails = [p.email for p in chunk]
    ids = await _known_users(session, emails)
    missing = [p for p in chunk if p.email not in ids]
    if not missing:
        return ids, 0
    rows = [
        {
            "email": p.email,
            "display_name": p.name,
            "is_admin": False,
            "status": UserStatus.ACTIVE.value,
            "bounce_score": 0.0,
            "timezone": None,
            "announcements_muted": False,
            "created_at": now,
        }
        for p in missing
    ]
    # One statement with many parameter sets: SQLAlchemy sends it as batched multi-row INSERTs ("insertmanyvalues")
    # from one cached compilation, where a .values(rows) statement would be compiled anew for every chunk.
    await session.execute(
        dialect_insert(session, User.__table__).on_conflict_do_nothing(index_elements=["email"]), rows
    )
    created_ids = await _known_users(session, [p.email for p in missing])
    ids.update(created_ids)
    # A concurrent writer may have created some of them first; those count as existing.
    return ids, len(created_ids)


async def bulk_add_users(session: AsyncSession, lines: Iterable[str], now: datetime) -> BulkReport:
    """Register every valid address not known yet (as a user's primary or further address) as an active user."""
    count, good, bad, duplicates = _parse_lines(lines)
    await _prefer_custom_plans(session)
    created = 0
    for start in range(0, len(good), CHUNK):
        chunk = [parsed for _, parsed in good[start : start + CHUNK]]
        _ids, made = await _ensure_users(session, chunk, now)
        created += made
    return BulkReport(lines=count, addresses=len(good), users_created=created, users_existing=len(good) - created,
                      duplicates=duplicates, bad=tuple(bad))


async def bulk_subscribe(
    session: AsyncSession, lines: Iterable[str], category: Category, mode: SubscriptionMode, now: datetime
) -> BulkReport:
    """Subscribe every valid address to ``category`` with ``mode``, creating missing users.

    An existing subscription is left as it is (whatever its mode): the subscriber may have chosen it.
    """
    count, good, bad, duplicates = _parse_lines(lines)
    await _prefer_custom_plans(session)
    users_created = subs_created = subs_existing = 0
    for start in range(0, len(good), CHUNK):
        chunk = [parsed for _, parsed in good[start : start + CHUNK]]
        ids, made = await _ensure_users(session, chunk, now)
        users_created += made
        user_ids = sorted(set(ids.values()))
        existing = set(
            (
                await session.scalars(
                    select(CategorySubscription.user_id).where(
                        CategorySubscription.category_id == category.id, CategorySubscription.user_id.in_(user_ids)
                    )
                )
            ).all()
        )
        new_ids = [uid for uid in user_ids if uid not in existing]
        subs_existing += len(user_ids) - len(new_ids)
        if new_ids:
            rows = [
                {"user_id": uid, "category_id": category.id, "mode": mode.value, "last_digest_at": None,
                 "created_at": now}
                for uid in new_ids
            ]
            await session.execute(
                dialect_insert(session, CategorySubscription.__table__).on_conflict_do_nothing(
                    index_elements=["user_id", "category_id"]
                ),
                rows,
            )
            now_present = await session.scalar(
                select(func.count()).select_from(CategorySubscription).where(
                    CategorySubscription.category_id == category.id, CategorySubscription.user_id.in_(new_ids)
                )
            )
            inserted = int(now_present or 0)
            subs_created += inserted
            subs_existing += len(new_ids) - inserted
    return BulkReport(
        lines=count,
        addresses=len(good),
        users_created=users_created,
        users_existing=len(good) - users_created,
        subscriptions_created=subs_created,
        subscriptions_existing=subs_existing,
        duplicates=duplicates,
        bad=tuple(bad),
    )
