"""Fixtures for testing one pipeline step at a time, the way GNU Mailman tests each handler on its own.

Every test gets a fresh SQLite file with the schema made from the models, a ``Deps`` on it with a fixed clock and
a token secret, and one session inside an open transaction (rolled back afterwards). ``make_context`` parses a
small message and wraps it in the ``Context`` a step receives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from qaflow_mail.config import (
    DatabaseSettings,
    OutboundSettings,
    Settings,
    SiteSettings,
    TokensSettings,
)
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Base, Category, Disposition, Post, Source, User
from qaflow_mail.deps import Deps
from qaflow_mail.mail.addresses import Destination, NewTopic
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.pipeline import Context, Outcome

DOMAIN = "forum.test"
SECRET = "step-tests-secret"
NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
ALICE = "alice@example.org"
BOB = "bob@example.net"
STRANGER = "stranger@elsewhere.example"

DEFAULT_HEADERS: dict[str, str] = {
    "From": f"Alice <{ALICE}>",
    "To": f"general@{DOMAIN}",
    "Subject": "How do I rotate the logs?",
    "Date": format_datetime(NOW),
    "Message-ID": "<msg-1@example.org>",
}
GENERAL = NewTopic("general")
DEFAULT_BODY = "The log grows without bound. What is the usual way to rotate it?\n"


def build_mail(headers: Mapping[str, str | None] | None = None, body: str = DEFAULT_BODY) -> bytes:
    """A small text/plain message: DEFAULT_HEADERS updated by `headers` (a value of None drops that header)."""
    merged: dict[str, str | None] = {**DEFAULT_HEADERS, **(headers or {})}
    lines = [f"{name}: {value}" for name, value in merged.items() if value is not None]
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")).encode()


def token(kind: TokenKind, *ids: int, secret: str = SECRET) -> str:
    """A token of `kind` for `ids`, issued today (by the fixed clock)."""
    return sign(kind, ids, secret=secret, issued=NOW.date())


class MakeContext(Protocol):
    def __call__(
        self, raw_or_headers: bytes | Mapping[str, str | None] | None = None, *, body: str = DEFAULT_BODY,
        destination: Destination = ..., source: Source = Source.SMTP, envelope_from: str | None = None,
        recipient: str | None = None, **fields: Any,
    ) -> Context: ...


def tuned(deps: Deps, section: str, **changes: Any) -> Deps:
    """`deps` with one settings section changed, e.g. ``tuned(deps, "limits", sender_rate_per_hour=2)``."""
    settings = deps.settings
    changed = dataclasses.replace(getattr(settings, section), **changes)
    return dataclasses.replace(deps, settings=dataclasses.replace(settings, **{section: changed}))


def assert_refused(result: Context | Outcome, reply: Any) -> Outcome:
    """`result` is a rejection with exactly `reply` (an SmtpReply from qaflow_mail.replies)."""
    assert isinstance(result, Outcome), f"expected a refusal, the step passed on {result!r}"
    assert result.disposition == Disposition.REJECTED, result
    assert result.reply == reply, result
    return result


def passed(result: Context | Outcome) -> Context:
    """`result` is the Context the step passes on (not an Outcome)."""
    assert isinstance(result, Context), f"expected the step to pass the message on, got {result!r}"
    return result


async def add_post(
    session: AsyncSession, *, author: User, category: Category, message_id: str, parent: Post | None = None,
    subject: str = "Rotating logs", body: str = "Use logrotate.", created_at: datetime = NOW,
) -> Post:
    """A stored post (and its topic when it has no parent), as an earlier message would have left it."""
    if parent is None:
        topic = await queries.create_topic(session, category_id=category.id, author_id=author.id, subject=subject,
                                           now=created_at)
        topic_id = topic.id
    else:
        topic_id = parent.topic_id
    post = Post(topic_id=topic_id, author_id=author.id, parent_id=None if parent is None else parent.id,
                message_id=message_id, subject=subject, body_text=body, source=Source.SMTP.value,
                created_at=created_at)
    session.add(post)
    await session.flush()
    return post


@pytest.fixture
def step_settings(tmp_path: Path) -> Settings:
    return Settings(
        site=SiteSettings(name="QAFlow Test", domain=DOMAIN, base_url=f"http://{DOMAIN}",
                          data_dir=str(tmp_path / "var")),
        database=DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'steps.db'}"),
        outbound=OutboundSettings(outbox_dir=str(tmp_path / "outbox")),
        tokens=TokensSettings(secret=SECRET),
    )


@pytest.fixture
async def engine(step_settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A fresh SQLite database file with the schema created straight from the models."""
    db = create_engine(step_settings.database.url)
    async with db.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield db
    await db.dispose()


@pytest.fixture
def deps(step_settings: Settings, engine: AsyncEngine) -> Deps:
    return Deps.build(step_settings, session_factory(engine), clock=lambda: NOW)


@pytest.fixture
async def session(deps: Deps) -> AsyncIterator[AsyncSession]:
    """One session inside an open transaction, as ingest gives the steps; rolled back after the test."""
    async with deps.sessions() as s:
        tx = await s.begin()
        try:
            yield s
        finally:
            if tx.is_active:
                await tx.rollback()


@pytest.fixture
async def general(session: AsyncSession) -> Category:
    """A members-only category."""
    return await queries.add_category(session, slug="general", name="General", allow_strangers=False)


@pytest.fixture
async def open_category(session: AsyncSession) -> Category:
    """A category that takes posts from unknown senders."""
    return await queries.add_category(session, slug="open", name="Open", allow_strangers=True)


@pytest.fixture
async def alice(session: AsyncSession) -> User:
    return await queries.add_user(session, email=ALICE, display_name="Alice", now=NOW)


@pytest.fixture
async def bob(session: AsyncSession) -> User:
    return await queries.add_user(session, email=BOB, display_name="Bob", now=NOW)


@pytest.fixture
def make_context(deps: Deps, session: AsyncSession) -> MakeContext:
    """Build the Context a step receives: a message (raw bytes, or headers over DEFAULT_HEADERS plus `body`),
    its destination and source, and any further Context fields (author=, category=, parent=, ...)."""

    def make(
        raw_or_headers: bytes | Mapping[str, str | None] | None = None, *, body: str = DEFAULT_BODY,
        destination: Destination = GENERAL, source: Source = Source.SMTP,
        envelope_from: str | None = None, recipient: str | None = None, **fields: Any,
    ) -> Context:
        raw = raw_or_headers if isinstance(raw_or_headers, bytes) else build_mail(raw_or_headers, body)
        parsed = parse_message(raw)
        ctx = Context(
            deps=deps, session=session, raw=raw, parsed=parsed,
            envelope_from=parsed.from_address if envelope_from is None else envelope_from,
            recipient=recipient or f"general@{DOMAIN}", destination=destination, source=source, now=NOW,
        )
        return dataclasses.replace(ctx, **fields)

    return make

