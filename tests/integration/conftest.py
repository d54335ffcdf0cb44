"""Fixtures for integration tests that need a real mail peer on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.db.engine import create_engine, session_factory
from tests.dovecot import INSTALL_HINT, Dovecot, missing_binaries
from tests.sink import SmtpSink

DovecotFactory = Callable[..., Dovecot]


@pytest.fixture
def dovecot_factory() -> Iterator[DovecotFactory]:
    """Starts throwaway Dovecot servers (`capabilities=` replaces what one advertises after login); every one is
    stopped and deleted after the test. Skips when Dovecot is not installed."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: {INSTALL_HINT}")
    servers: list[Dovecot] = []

    def start(*, capabilities: str | None = None) -> Dovecot:
        server = Dovecot.create(capabilities=capabilities)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.remove()


@pytest.fixture
def dovecot(dovecot_factory: DovecotFactory) -> Dovecot:
    """A throwaway Dovecot: IMAP and IMAPS on free loopback ports, user `test`, an empty INBOX."""
    return dovecot_factory()


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    """A real SMTP server on loopback that keeps what it receives (the gateway's relay in `transport = "smtp"`)."""
    async with SmtpSink() as server:
        yield server


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on the test database, for tests whose server runs in another process (or not at all)."""
    engine = create_engine(database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()
