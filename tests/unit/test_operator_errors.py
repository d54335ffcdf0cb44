"""Operator mistakes are explained in one line that names the real cause."""

from __future__ import annotations

import errno

from qaflow_mail.commands.operator_errors import explain
from qaflow_mail.config import Settings


def test_a_port_in_use_is_not_blamed_on_the_database() -> None:
    busy = OSError(errno.EADDRINUSE, "error while attempting to bind on address ('127.0.0.1', 8025): address "
                                     "already in use")
    message = explain(busy, Settings())
    assert message is not None
    assert message.startswith("cannot listen: ") and "8025" in message and "database" not in message


def test_a_refused_database_connection_names_the_database() -> None:
    message = explain(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Settings())
    assert message is not None and message.startswith("cannot reach the database")
