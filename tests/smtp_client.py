"""A small SMTP client for tests that reports every reply instead of raising on the first refusal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib
from aiosmtplib.errors import SMTPResponseException


@dataclass
class Conversation:
    mail_from: tuple[int, str] | None = None
    rcpts: dict[str, tuple[int, str]] = field(default_factory=dict)
    data: tuple[int, str] | None = None

    @property
    def data_code(self) -> int | None:
        return None if self.data is None else self.data[0]


async def send(
    port: int,
    message: bytes | EmailMessage,
    *,
    mail_from: str,
    rcpt_tos: Sequence[str],
    host: str = "127.0.0.1",
) -> Conversation:
    raw = message.as_bytes() if isinstance(message, EmailMessage) else message
    conv = Conversation()
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=30)
    await client.connect()
    try:
        await client.ehlo()
        try:
            resp = await client.mail(mail_from)
            conv.mail_from = (resp.code, resp.message)
        except SMTPResponseException as exc:
            conv.mail_from = (exc.code, exc.message)
            return conv
        for rcpt in rcpt_tos:
            try:
                resp = await client.rcpt(rcpt)
                conv.rcpts[rcpt] = (resp.code, resp.message)
            except SMTPResponseException as exc:
                conv.rcpts[rcpt] = (exc.code, exc.message)
        if any(code < 300 for code, _ in conv.rcpts.values()):
            try:
                resp = await client.data(raw)
                conv.data = (resp.code, resp.message)
            except SMTPResponseException as exc:
                conv.data = (exc.code, exc.message)
    finally:
        try:
            await client.quit()
        except Exception:
            client.close()
    return conv


def make_mail(
    *,
    sender: str,
    to: str,
    subject: str = "Hello",
    body: str = "Hello forum",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="client.test")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg
