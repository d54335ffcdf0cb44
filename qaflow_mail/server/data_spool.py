"""SMTP DATA read in bulk into a spool (memory up to a threshold, then a temporary file), never line by line into
a list held whole in memory.

aiosmtpd's own ``smtp_DATA`` keeps every line as a bytearray and then joins them: a 25 MB message costs several
times its size while it arrives, and its stream buffer had to be as large as a message to take long lines. Here
the stream buffer stays at ``line_length_limit`` (the transport pauses beyond twice that), the bytes go to a
``SpooledTemporaryFile``, and the handler reads the message back only once it may (``server.mail_budget``).

Everything else is as in aiosmtpd: the 354, dot-unstuffing (RFC 5321 §4.5.2), and a 552 for a message over
``data_size_limit`` sent only after its last byte arrived (§4.2.5). The handler's ``handle_DATA`` finds the
message in ``server.spool`` (``envelope.original_content`` stays None) and its answer is sent after it returns,
so a 250 still follows the commit.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import IO, Any

from aiosmtpd.smtp import MISSING

from qaflow_mail.replies import too_big

_END = b"\r\n.\r\n"
# Bytes the stream buffer holds (and a read returns) at most; a longer line is taken in pieces.
STREAM_LIMIT = 64 * 1024


def unstuff(chunk: bytes, previous: bytes) -> bytes:
    """``chunk`` without the dot that starts each of its lines; ``previous`` is what came just before it (the
    last two bytes; b"\\r\\n" at the start of the data)."""
    data = chunk.replace(b"\r\n.", b"\r\n")
    if previous.endswith(b"\r\n") and data.startswith(b"."):
        data = data[1:]
    elif previous.endswith(b"\r") and chunk.startswith(b"\n."):
        data = b"\n" + data[2:]
    return data


class SpooledData:
    """A mixin before aiosmtpd's SMTP: ``smtp_DATA`` reads into ``self.spool``. Set ``spool_threshold`` and
    ``spool_dir`` (None: the system's temporary directory) before the connection is made."""

    spool_threshold: int = 1024 * 1024
    spool_dir: str | None = None
    spool: IO[bytes] | None = None
    spool_size: int = 0
    data_size_limit: int | None
    # aiosmtpd sizes its stream buffer by this (and reads commands with it): long DATA lines are read in pieces.
    line_length_limit = STREAM_LIMIT

    async def _read_data(self, spool: IO[bytes]) -> int | None:
        """Write the unstuffed data to ``spool`` up to the terminating dot; its size, or None when it was over
        ``data_size_limit`` (then the rest was read and dropped)."""
        reader: asyncio.StreamReader = self._reader  # type: ignore[attr-defined]
        limit = self.data_size_limit
        size = 0
        previous = b"\r\n"  # the data starts at the start of a line
        while True:
            if previous.endswith(b"\r"):
                # A read ended between CR and LF: take the LF alone, so the end marker is never split.
                chunk = await reader.readexactly(1)
                finished = False
            elif previous.endswith(b"\r\n"):
                # At the start of a line: the end marker may be this very line, with its CRLF read already.
                try:
                    chunk = await reader.readuntil(b"\r\n")
                except asyncio.LimitOverrunError as overrun:
                    chunk = await reader.read(overrun.consumed)
                if chunk == b".\r\n":
                    return size if limit is None or size <= limit else None
                finished = False
            else:
                try:
                    chunk = (await reader.readuntil(_END))[:-3]  # keep the last line's CRLF, drop ".\r\n"
                    finished = True
                except asyncio.LimitOverrunError as overrun:
                    # No end marker in the buffer: take what cannot be part of one, leaving two bytes so a CRLF
                    # that starts the marker is read with it.
                    chunk = await reader.read(max(1, overrun.consumed - 2))
                    finished = False
            data = unstuff(chunk, previous)
            previous = (previous + chunk)[-2:]
            size += len(data)
            if limit is None or size <= limit:
                spool.write(data)
            if finished:
                return size if limit is None or size <= limit else None

    async def smtp_DATA(self, arg: str) -> None:
        server: Any = self  # aiosmtpd's internals, untyped
        if await server.check_helo_needed() or await server.check_auth_needed("DATA"):
            return
        envelope = server.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await server.push("503 Error: need RCPT command")
            return
        if arg:
            await server.push("501 Syntax: DATA")
            return
        await server.push("354 End data with <CR><LF>.<CR><LF>")
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed below or by the handler)
            max_size=self.spool_threshold, dir=self.spool_dir, prefix="qaflow-data-"
        )
        try:
            size = await self._read_data(spool)
        except BaseException:
            # The connection went away mid-DATA (aiosmtpd cancels this coroutine): nothing was promised.
            spool.close()
            server._writer.close()
            raise
        if size is None:
            spool.close()
            server._set_post_data_state()
            await server.push(str(too_big(self.data_size_limit)))
            return
        self.spool, self.spool_size = spool, size
        envelope.content = envelope.original_content = None
        try:
            status = await server._call_handler_hook("DATA")  # only the handle_DATA hook is supported
        finally:
            self.spool, self.spool_size = None, 0
            spool.close()
        server._set_post_data_state()
        await server.push("250 OK" if status is MISSING else status)

    def read_spool(self) -> bytes:
        """The whole message received in this DATA (only while its handler runs)."""
        assert self.spool is not None
        self.spool.seek(0)
        return self.spool.read()
