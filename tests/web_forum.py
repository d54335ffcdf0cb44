"""A running forum for web tests: the real SMTP listener and the real HTTP server on loopback, members to post as,
and helpers to send mail and fetch pages."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.message import EmailMessage

import aiohttp
from multidict import CIMultiDict

from qaflow_mail.db import queries
from qaflow_mail.db.defaults import ensure_default_categories
from qaflow_mail.server.app import Running
from qaflow_mail.server.http import http_server
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
ALICE, BOB, CAROL = "alice@example.org", "bob@example.net", "carol@example.com"


@dataclasses.dataclass
class Page:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclasses.dataclass
class WebForum:
    run: Running
    base: str  # http://127.0.0.1:<port>

    async def mail(self, sender: str, to: str, *, subject: str = "Hello", body: str = "Hello forum",
                   message_id: str | None = None, in_reply_to: str | None = None,
                   references: Sequence[str] = (), message: EmailMessage | None = None) -> int | None:
        """Send by SMTP; the DATA reply code."""
        msg = message or make_mail(sender=sender, to=to, subject=subject, body=body, message_id=message_id,
                                   in_reply_to=in_reply_to, references=references)
        return (await send(self.run.smtp_port, msg, mail_from=sender, rcpt_tos=[to])).data_code

    async def get(self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
                  follow: bool = False) -> Page:
        async with aiohttp.ClientSession() as client, client.request(
            method, self.base + path, headers=headers or {}, allow_redirects=follow
        ) as response:
            body = await response.read()
            return Page(status=response.status, headers=CIMultiDict(response.headers), body=body)


async def add_members(run: Running) -> None:
    now = datetime.now(UTC)
    async with run.deps.sessions() as session, session.begin():
        await ensure_default_categories(session)
        await queries.add_user(session, email=ALICE, display_name="Alice Admin", is_admin=True, now=now)
        await queries.add_user(session, email=BOB, display_name="Bob", now=now)
        await queries.add_user(session, email=CAROL, display_name="", now=now)  # no name: shown masked
        await queries.add_category(session, slug="staff", name="Staff", allow_strangers=False)
    await run.deps.categories.reload()


@asynccontextmanager
async def web_forum(run: Running) -> AsyncIterator[WebForum]:
    await add_members(run)
    async with http_server(run.deps) as port:
        yield WebForum(run=run, base=f"http://127.0.0.1:{port}")
