"""Unsubscribing: the one-click HTTPS endpoint over real HTTP (RFC 8058) and the mailto: address over SMTP."""

from __future__ import annotations

import dataclasses
import email
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import policy

import aiohttp
import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, CategorySubscription, Outbox, OutboxKind, SubscriptionMode, User
from qaflow_mail.mail.tokens import TokenKind, sign
from qaflow_mail.server.app import Running
from qaflow_mail.server.http import http_server
from tests.fanout import fanout_done
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
ALICE, BOB = "alice@example.org", "bob@example.net"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, site=dataclasses.replace(settings.site, base_url="https://forum.test"))


@dataclasses.dataclass
class Forum:
    run: Running
    base: str  # http://127.0.0.1:<port>
    bob_id: int
    category_id: int

    def token(self, user_id: int | None = None, category_id: int | None = None, *, days_ahead: int = 0) -> str:
        """An unsubscribe token, Bob's for this category unless told otherwise."""
        ids = (user_id or self.bob_id, self.category_id if category_id is None else category_id)
        issued = datetime.now(UTC).date() + timedelta(days=days_ahead)
        return sign(TokenKind.UNSUBSCRIBE, ids, secret=self.run.deps.settings.tokens.secret, issued=issued)


@pytest.fixture
async def forum(gateway: Running) -> AsyncIterator[Forum]:
    now = datetime.now(UTC)
    async with gateway.deps.sessions() as session, session.begin():
        general = await queries.add_category(session, slug="general", name="General <b>&</b> Co",
                                             allow_strangers=False)
        alice = await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
        bob = await queries.add_user(session, email=BOB, display_name="Bob", now=now)
        for user in (alice, bob):
            session.add(CategorySubscription(user_id=user.id, category_id=general.id, mode=SubscriptionMode.EACH,
                                             created_at=now))
    await gateway.deps.categories.reload()
    async with http_server(gateway.deps) as port:
        yield Forum(run=gateway, base=f"http://127.0.0.1:{port}", bob_id=bob.id, category_id=general.id)


async def mode_of(forum: Forum, user_id: int) -> str | None:
    async with forum.run.deps.sessions() as session:
        return await session.scalar(
            select(CategorySubscription.mode).where(
                CategorySubscription.user_id == user_id, CategorySubscription.category_id == forum.category_id
            )
        )


async def notices(forum: Forum) -> list[Outbox]:
    async with forum.run.deps.sessions() as session:
        return list((await session.scalars(select(Outbox).where(Outbox.kind == OutboxKind.NOTICE.value))).all())


# --- HTTPS ------------------------------------------------------------------------------------------------------


async def test_get_shows_a_confirm_page_and_changes_nothing(forum: Forum) -> None:
    token = forum.token()
    async with aiohttp.ClientSession() as client, client.get(f"{forum.base}/unsubscribe/{token}") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
        assert "Set-Cookie" not in response.headers
        assert response.headers["Cache-Control"] == "no-store"
    assert '<form method="post" action="/unsubscribe/' + token + '">' in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert "General &lt;b&gt;&amp;&lt;/b&gt; Co" in page  # escaped, never markup
    assert "<b>&</b>" not in page
    assert "bo***@example.net" in page and BOB not in page
    assert await mode_of(forum, forum.bob_id) == SubscriptionMode.EACH


async def test_one_click_post_unsubscribes_without_login_or_cookies(forum: Forum) -> None:
    url = f"{forum.base}/unsubscribe/{forum.token()}"
    async with aiohttp.ClientSession() as client:
        # RFC 8058: what a mail provider sends, with no cookies and no credentials.
        async with client.post(url, data="List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
            assert response.status == 200
            page = await response.text()
            assert "Set-Cookie" not in response.headers
        assert "You are unsubscribed" in page
        assert await mode_of(forum, forum.bob_id) == SubscriptionMode.MUTE
        # Again, and with any body at all: still fine, still off.
        for body in ("", "whatever=1"):
            async with client.post(url, data=body) as response:
                assert response.status == 200
    assert await mode_of(forum, forum.bob_id) == SubscriptionMode.MUTE
    async with forum.run.deps.sessions() as session:
        alice = await queries.user_by_email(session, ALICE)
    assert alice is not None and await mode_of(forum, alice.id) == SubscriptionMode.EACH
    assert await notices(forum) == []  # the HTTPS path sends no confirmation mail


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bad_tokens_get_400_and_a_clear_page(forum: Forum, method: str) -> None:
    good = forum.token()
    settings = forum.run.deps.settings
    tampered = good[:4] + ("a" if good[4] != "a" else "b") + good[5:]
    wrong_kind = sign(TokenKind.REPLY, (1, forum.bob_id), secret=settings.tokens.secret,
                      issued=datetime.now(UTC).date())
    future = forum.token(days_ahead=30)
    cases = {tampered: "not valid", "zzzz": "not valid", wrong_kind: "not valid", future: "has expired",
             "<script>": "not valid"}
    async with aiohttp.ClientSession() as client:
        for token, words in cases.items():
            async with client.request(method, f"{forum.base}/unsubscribe/{token}") as response:
                assert response.status in (400, 404), token
                if response.status == 400:
                    page = await response.text()
                    assert words in page
                    assert "use the unsubscribe link in a recent email" in page
    assert await mode_of(forum, forum.bob_id) == SubscriptionMode.EACH


async def test_announcements_token_mutes_announcements(forum: Forum) -> None:
    url = f"{forum.base}/unsubscribe/{forum.token(category_id=0)}"
    async with aiohttp.ClientSession() as client, client.post(url) as response:
        assert response.status == 200
        assert "with announcements" in await response.text()
    async with forum.run.deps.sessions() as session:
        bob = await session.get(User, forum.bob_id)
    assert bob is not None and bob.announcements_muted
    assert await mode_of(forum, forum.bob_id) == SubscriptionMode.EACH


async def test_healthz(forum: Forum) -> None:
    async with aiohttp.ClientSession() as client, client.get(f"{forum.base}/healthz") as response:
        assert response.status == 200
        assert (await response.text()).strip() == "ok"


async def test_one_click_from_a_delivered_notification_stops_the_next_ones(forum: Forum) -> None:
    run = forum.run
    first = make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="One", body="First.", message_id="<u1@c.test>")
    assert (await send(run.smtp_port, first, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])).data_code == 250
    await fanout_done(run.deps)
    async with run.deps.sessions() as session:
        row = await session.scalar(select(Outbox).where(Outbox.recipient == BOB))
    assert row is not None
    header = str(email.message_from_bytes(row.raw, policy=policy.default)["List-Unsubscribe"])
    match = re.search(r"<https://forum\.test(/unsubscribe/[a-z2-7]+)>", header)
    assert match is not None
    async with aiohttp.ClientSession() as client, client.post(forum.base + match.group(1),
                                                              data="List-Unsubscribe=One-Click") as response:
        assert response.status == 200
    second = make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="Two", body="Second.", message_id="<u2@c.test>")
    assert (await send(run.smtp_port, second, mail_from=ALICE, rcpt_tos=[f"general@{DOMAIN}"])).data_code == 250
    await fanout_done(run.deps)
    async with run.deps.sessions() as session:
        to_bob = (await session.scalars(select(Outbox).where(Outbox.recipient == BOB))).all()
    assert len(to_bob) == 1


# --- mailto: ----------------------------------------------------------------------------------------------------


async def test_mailto_unsubscribes_and_queues_one_confirmation(forum: Forum) -> None:
    run = forum.run
    address = f"unsubscribe+{forum.token()}@{DOMAIN}"
    for mid in ("<m1@client.test>", "<m2@client.test>"):
        request = make_mail(sender=BOB, to=address, subject="unsubscribe", body="", message_id=mid)
        conv = await send(run.smtp_port, request, mail_from=BOB, rcpt_tos=[address])
        assert conv.rcpts[address][0] == 250
        assert conv.data_code == 250
    assert await mode_of(forum, forum.bob_id) == SubscriptionMode.MUTE

    rows = await notices(forum)
    assert len(rows) == 1  # the second request changed nothing and sent nothing new today
    row = rows[0]
    assert row.recipient == BOB and row.user_id == forum.bob_id
    assert row.envelope_from.startswith("bounces+") and row.envelope_from.endswith(f"@{DOMAIN}")
    msg = email.message_from_bytes(row.raw, policy=policy.default)
    assert msg["To"].addresses[0].addr_spec == BOB
    assert msg["Subject"] == "[QAFlow Test] You are unsubscribed from General <b>&</b> Co"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<m1@client.test>"
    assert "You will no longer get emails about new posts in General" in msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "General &lt;b&gt;&amp;&lt;/b&gt; Co" in html


async def test_mailto_confirmation_goes_to_the_subscriber_not_the_sender(forum: Forum) -> None:
    run = forum.run
    address = f"unsubscribe+{forum.token()}@{DOMAIN}"
    request = make_mail(sender="someone@else.example", to=address, subject="", body="")
    assert (await send(run.smtp_port, request, mail_from="someone@else.example", rcpt_tos=[address])).data_code == 250
    assert [row.recipient for row in await notices(forum)] == [BOB]


async def test_mailto_with_a_bad_token_is_refused(forum: Forum) -> None:
    run = forum.run
    good = forum.token()
    for token in (good[:4] + ("a" if good[4] != "a" else "b") + good[5:], forum.token(user_id=999_999)):
        address = f"unsubscribe+{token}@{DOMAIN}"
        conv = await send(run.smtp_port, make_mail(sender=BOB, to=address, body=""), mail_from=BOB,
                          rcpt_tos=[address])
        assert conv.data is not None
        code, text = conv.data
        assert code == 550 and text.startswith("5.1.1"), conv.data
        assert "use the unsubscribe link" in text
    assert await mode_of(forum, forum.bob_id) == SubscriptionMode.EACH
    assert await notices(forum) == []


async def test_deleted_category_token_is_refused(forum: Forum) -> None:
    async with forum.run.deps.sessions() as session, session.begin():
        extra = Category(slug="gone", name="Gone")
        session.add(extra)
        await session.flush()
        gone_id = extra.id
        await session.delete(extra)
    async with aiohttp.ClientSession() as client, client.post(
        f"{forum.base}/unsubscribe/{forum.token(category_id=gone_id)}"
    ) as response:
        assert response.status == 400
