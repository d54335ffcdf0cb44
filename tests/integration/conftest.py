"""Fixtures for integration tests that need a real mail peer on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.dovecot import INSTALL_HINT, Dovecot, missing_binaries

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
