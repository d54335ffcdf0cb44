"""Log lines a hostile client cannot abuse: tokens in addresses masked, and a flood of lines thinned.

aiosmtpd logs every command line and every RCPT address at INFO; a reply or unsubscribe address carries a token
that is as good as a password, and a client can make it log as fast as it can send.
"""

from __future__ import annotations

import logging
import re
import threading
import time

# local+token@domain: every token address of ours has this shape (reply+, unsubscribe+, bounces+, confirm+, ...).
_TOKEN_ADDRESS_RE = re.compile(r"([A-Za-z0-9._-]+)\+[^@\s<>'\"]+@")

# Loggers a connection can make talk: aiosmtpd's, asyncio's (accept errors), and our listener's.
GUARDED_LOGGERS = ("mail.log", "asyncio", "qaflow_mail.server.smtp")


def redact_tokens(text: str) -> str:
    """`text` with the token of every token address replaced by "…"."""
    return _TOKEN_ADDRESS_RE.sub(r"\1+…@", text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_tokens(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class RateLimit(logging.Filter):
    """At most `per_second` records a second from the logger it guards; the next record let through says how
    many were dropped."""

    def __init__(self, per_second: int = 50) -> None:
        super().__init__()
        self.per_second = per_second
        self._window = 0
        self._count = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        window = int(time.monotonic())
        with self._lock:
            if window != self._window:
                self._window, self._count = window, 0
            self._count += 1
            if self._count > self.per_second:
                self._dropped += 1
                return False
            dropped, self._dropped = self._dropped, 0
        if dropped:
            record.msg, record.args = f"{record.getMessage()} [{dropped} log lines dropped before this one]", None
        return True


def guard_logs(per_second: int = 50) -> None:
    """Install both filters on the loggers a client can drive (once per process)."""
    for name in GUARDED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimit) for f in logger.filters):
            logger.addFilter(RateLimit(per_second))
            logger.addFilter(RedactTokens())
