"""Joining from the web, over real HTTP and real SMTP: the confirmation link (GET shows, POST confirms, once, within
its days) and the "Follow by email" form (one answer whatever the address, one confirmation, a per-client limit)."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from sqlalchemy import func, select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.defaults import ensure_default_categories
from qaflow_mail.db.models import ConfirmationRequest, SubscriptionMode, Topic, UserStatus
from qaflow_mail.mail.tokens import TokenKind, sign, unsubscribe_ids
from qaflow_mail.server.app import Running
from qaflow_mail.server.http import http_server
from qaflow_mail.services.subscriptions import subscribe
from tests.clock import Clock
from tests.integration.test_membership import deliver, mail, reply_to, subscription
from tests.sink import SinkMessage, SmtpSink
from tests.web_forum import Page

DOMAIN = "forum.test"
ALICE, BOB, NEWCOMER = "alice@example.org", "bob@example.net", "newcomer@example.net"
CONFIRM_LINK_RE = re.compile(r"http://forum\.test(/confirm/([a-z2-7]+))")


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    return dataclasses.replace(
        settings,
        outbound=dataclasses.replace(settings.outbound, **sink.as_relay()),
    )


@dataclasses.dataclass
class Forum:
    run: Running
    port: int  # the HTTP server's


@pytest.fixture
async def forum(gateway: Running) -> AsyncIterator[Forum]:
    now = datetime.now(UTC)
    async with gateway.deps.sessions() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        staff = await queries.add_category(session, slug="staff", name="Staff", allow_strangers=False)
        staff.private = True
        await session.flush()
        await ensure_default_categories(session)  # the announcements
        await queries.add_user(session, email=ALICE, display_name="Alice", now=now)
        await queries.add_user(session, email=BOB, display_name="Bob", now=now)
        await subscribe(session, email=BOB, category_slug="general", mode=SubscriptionMode.EACH, now=now)
    await gateway.deps.categories.reload()
    async with http_server(gateway.deps) as port:
        yield Forum(run=gateway, port=port)


async def http(forum: Forum, path: str, *, method: str = "GET", form: dict[str, str] | None = None,
               port: int | None = None) -> Page:
    url = f"http://127.0.0.1:{port or forum.port}{path}"
    async with aiohttp.ClientSession() as client, client.request(method, url, data=form,
                                                                 allow_redirects=False) as response:
        return Page(status=response.status, headers=response.headers.copy(), body=await response.read())


def confirm_link(message: SinkMessage) -> tuple[str, str]:
    """The confirmation mail's link: (its path, its token)."""
    body = message.parsed().get_body(("plain",))
    assert body is not None
    text = str(body.get_content())
    found = CONFIRM_LINK_RE.search(text)
    assert found is not None, text
    return found.group(1), found.group(2)


def texts(message: SinkMessage) -> str:
    """Every text part of a message, decoded, one after the other."""
    return "\n".join(str(part.get_content()) for part in message.parsed().walk()
                     if part.get_content_maintype() == "text")


async def confirmations(run: Running) -> int:
    async with run.deps.sessions() as session:
        return int(await session.scalar(select(func.count(ConfirmationRequest.id))) or 0)


# --- the confirmation link ----------------------------------------------------------------------------------------


async def test_the_link_shows_on_get_confirms_on_post_and_works_once(
    forum: Forum, sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert await mail(forum.run, sender=f"New Comer <{NEWCOMER}>", to=f"general-join@{DOMAIN}", subject="daily") == 250
    [confirmation] = await deliver(forum.run, sink, 1)
    path, token = confirm_link(confirmation)
    assert token in reply_to(confirmation)  # the link and the reply address confirm the same request
    caplog.clear()  # from here on, the web side: the token must reach no log line

    # GET (what link scanners and previews do) shows what would happen and changes nothing, however often.
    for _ in range(2):
        page = await http(forum, path)
        assert page.status == 200
        assert "Confirm: join General as ne***@example.net" in page.text and NEWCOMER not in page.text
        assert f'<form method="post" action="{path}">' in page.text
        assert '<meta name="robots" content="noindex">' in page.text
        assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
        assert "Set-Cookie" not in page.headers
    assert await subscription(forum.run, NEWCOMER) == (None, None)

    # POST confirms: no login, no cookie, any body. The stranger is a user now, named from the From of the request.
    page = await http(forum, path, method="POST", form={})
    assert page.status == 200 and "Confirmed" in page.text and "a daily digest" in page.text
    assert "Set-Cookie" not in page.headers and token not in page.text
    user, mode = await subscription(forum.run, NEWCOMER)
    assert user is not None and user.status == UserStatus.ACTIVE and user.display_name == "New Comer"
    assert mode == SubscriptionMode.DAILY
    [welcome] = await deliver(forum.run, sink, 1)
    assert welcome.rcpt_tos == (NEWCOMER,) and "Welcome to General" in str(welcome.parsed()["Subject"])

    # Once only, whichever way it is tried again.
    again = await http(forum, path, method="POST")
    assert again.status == 409 and "Already confirmed" in again.text and "works once" in again.text
    assert (await http(forum, path)).status == 409
    leaked = [record.getMessage() for record in caplog.records if token in record.getMessage()]
    assert leaked == [], "\n".join(leaked)
    assert await mail(forum.run, sender=NEWCOMER, to=reply_to(confirmation), body="yes") == 550
    await deliver(forum.run, sink, 0)  # and nothing more was mailed


async def test_a_private_category_is_joined_by_mail_and_no_mail_or_page_links_to_it(
    forum: Forum, sink: SmtpSink) -> None:
    """Private means mail only, not invitation only: the web has no Staff (no page, no form), mail joins it."""
    assert (await http(forum, "/c/staff/follow", method="POST", form={"address": NEWCOMER})).status == 404
    assert await confirmations(forum.run) == 0
    assert await mail(forum.run, sender=NEWCOMER, to=f"staff-join@{DOMAIN}", subject="weekly") == 250
    [confirmation] = await deliver(forum.run, sink, 1)
    path, _token = confirm_link(confirmation)
    assert "http://forum.test" in texts(confirmation)
    assert "/c/staff" not in texts(confirmation)  # it would be a 404: the site's front page instead
    page = await http(forum, path, method="POST", form={})
    assert page.status == 200 and "a weekly digest" in page.text and "/c/staff" not in page.text
    assert (await subscription(forum.run, NEWCOMER))[1] == SubscriptionMode.WEEKLY
    [welcome] = await deliver(forum.run, sink, 1)
    assert "Welcome to Staff" in str(welcome.parsed()["Subject"]) and "/c/staff" not in texts(welcome)

    # Leaving by its unsubscribe link: neither its page nor the "you are unsubscribed" mail links to Staff's page.
    async with forum.run.deps.sessions() as session:
        user = await queries.user_by_email(session, NEWCOMER)
        staff = await queries.category_by_slug(session, "staff")
        assert user is not None and staff is not None
        token = sign(TokenKind.UNSUBSCRIBE, unsubscribe_ids(user.id, staff.id, user.token_generation),
                     secret=forum.run.deps.settings.tokens.secret, issued=datetime.now(UTC).date())
    page = await http(forum, f"/unsubscribe/{token}")
    assert page.status == 200 and "/c/staff" not in page.text
    assert await mail(forum.run, sender=NEWCOMER, to=f"unsubscribe+{token}@{DOMAIN}") == 250
    [notice] = await deliver(forum.run, sink, 1)
    assert "http://forum.test" in texts(notice) and "/c/staff" not in texts(notice)
    assert (await subscription(forum.run, NEWCOMER))[1] == SubscriptionMode.MUTE
    page = await http(forum, f"/unsubscribe/{token}", method="POST", form={})
    assert page.status == 200 and "/c/staff" not in page.text and "http://forum.test" in page.text


async def test_a_leave_link_mutes_the_subscription(
    forum: Forum, sink: SmtpSink) -> None:
    assert await mail(forum.run, sender=BOB, to=f"general-leave@{DOMAIN}") == 250
    [confirmation] = await deliver(forum.run, sink, 1)
    path, _token = confirm_link(confirmation)
    assert "Confirm: leave General as bo***@example.net" in (await http(forum, path)).text
    assert (await subscription(forum.run, BOB))[1] == SubscriptionMode.EACH
    page = await http(forum, path, method="POST")
    assert page.status == 200 and "no longer gets emails about" in page.text
    assert (await subscription(forum.run, BOB))[1] == SubscriptionMode.MUTE


@pytest.mark.parametrize("days", [8, 40], ids=["past-its-deadline", "token-too-old"])
async def test_an_expired_link_says_so_and_changes_nothing(
    forum: Forum, sink: SmtpSink, clock: Clock,
                                                           days: int) -> None:
    assert await mail(forum.run, sender=NEWCOMER, to=f"general-join@{DOMAIN}") == 250
    [confirmation] = await deliver(forum.run, sink, 1)
    path, _token = confirm_link(confirmation)
    clock.now = datetime.now(UTC) + timedelta(days=days)
    for method in ("GET", "POST"):
        page = await http(forum, path, method=method)
        assert page.status == 410, method
        assert "This confirmation link has expired" in page.text and "Nothing was changed" in page.text
    assert await subscription(forum.run, NEWCOMER) == (None, None)


async def test_a_damaged_link_is_not_valid(
    forum: Forum, sink: SmtpSink) -> None:
    assert await mail(forum.run, sender=NEWCOMER, to=f"general-join@{DOMAIN}") == 250
    [confirmation] = await deliver(forum.run, sink, 1)
    path, token = confirm_link(confirmation)
    flipped = token[:-3] + ("a" if token[-3] != "a" else "b") + token[-2:]
    for damaged in (path.replace(token, flipped), path[:-4], "/confirm/not-a-token"):
        for method in ("GET", "POST"):
            page = await http(forum, damaged, method=method)
            assert page.status == 400, (damaged, method)
            assert "not valid" in page.text
    assert await subscription(forum.run, NEWCOMER) == (None, None)


# --- "Follow by email" --------------------------------------------------------------------------------------------


async def test_category_and_topic_pages_carry_the_form(
    forum: Forum, sink: SmtpSink) -> None:
    assert await mail(forum.run, sender=ALICE, to=f"general@{DOMAIN}", subject="Hello", body="First post") == 250
    async with forum.run.deps.sessions() as session:
        topic_id = await session.scalar(select(Topic.id))
    for path in ("/c/general", f"/t/{topic_id}"):
        page = await http(forum, path)
        assert page.status == 200
        assert '<form class="follow-form" method="post" action="/c/general/follow">' in page.text
        assert 'name="address" type="email"' in page.text and '<option value="daily"' in page.text
        assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    announcements = await http(forum, "/c/announcements")
    assert 'action="/c/announcements/follow"' in announcements.text and 'name="mode"' not in announcements.text
    # Private and unknown categories: no page, no form, and the form's address answers 404 too.
    for slug in ("staff", "nosuch"):
        assert (await http(forum, f"/c/{slug}")).status == 404
        assert (await http(forum, f"/c/{slug}/follow", method="POST", form={"address": NEWCOMER})).status == 404
    assert await confirmations(forum.run) == 0


async def test_the_form_answers_alike_for_every_address_and_mails_one_confirmation(
    forum: Forum, sink: SmtpSink
) -> None:
    def answer(page: Page, address: str) -> tuple[int, str, tuple[str, ...]]:
        return page.status, page.text.replace(address, "ADDRESS"), tuple(sorted(
            name for name in page.headers if name not in ("Date", "Content-Length")))

    pages: dict[tuple[int, str, tuple[str, ...]], list[str]] = {}
    for address in (NEWCOMER, BOB, "nobody@no-such-host.example.com", NEWCOMER):  # the last one: waiting already
        page = await http(forum, "/c/general/follow", method="POST", form={"address": address, "mode": "weekly"})
        pages.setdefault(answer(page, address), []).append(address)
    assert len(pages) == 1, pages  # a member, a stranger, a dead address, a repeat: one and the same answer
    [(status, text, _headers)] = pages
    assert status == 200
    assert "If <strong>ADDRESS</strong> can receive mail, a confirmation is on its way" in text
    assert not re.search(r"confirm[+/]", text)

    sent = await deliver(forum.run, sink, 3)
    assert sorted(message.rcpt_tos[0] for message in sent) == sorted([NEWCOMER, BOB, "nobody@no-such-host.example.com"])
    [to_newcomer] = [message for message in sent if message.rcpt_tos == (NEWCOMER,)]
    assert "Confirm: join General" in str(to_newcomer.parsed()["Subject"])
    # The newcomer confirms with the link; the mode chosen on the form holds.
    path, _token = confirm_link(to_newcomer)
    assert (await http(forum, path, method="POST")).status == 200
    user, mode = await subscription(forum.run, NEWCOMER)
    assert user is not None and user.display_name == "" and mode == SubscriptionMode.WEEKLY


@pytest.mark.parametrize("typed", ["not an address", "newcomer@localhost", "a@b.test", "Newcomer <n@example.net>",
                                   "n@example.net\r\nBcc: victim@example.com", '"><script>alert(1)</script>'])
async def test_what_is_not_an_address_gets_the_form_again(
    forum: Forum, sink: SmtpSink, typed: str) -> None:
    page = await http(forum, "/c/general/follow", method="POST", form={"address": typed, "mode": "each"})
    assert page.status == 400
    assert "That is not an email address" in page.text
    assert 'action="/c/general/follow"' in page.text
    assert "<script>" not in page.text
    assert await confirmations(forum.run) == 0


async def test_an_unknown_mode_gets_the_form_again(
    forum: Forum, sink: SmtpSink) -> None:
    page = await http(forum, "/c/general/follow", method="POST", form={"address": NEWCOMER, "mode": "hourly"})
    assert page.status == 400 and "Choose how often" in page.text
    assert await confirmations(forum.run) == 0


async def test_one_client_may_post_the_form_only_so_often(
    forum: Forum, sink: SmtpSink) -> None:
    limited = dataclasses.replace(forum.run.deps.settings,
                                  http=dataclasses.replace(forum.run.deps.settings.http, follow_per_client_per_hour=3))
    async with http_server(dataclasses.replace(forum.run.deps, settings=limited)) as port:
        statuses = []
        for n in range(5):
            page = await http(forum, "/c/general/follow", method="POST", port=port,
                              form={"address": f"reader{n}@example.net", "mode": "each"})
            statuses.append(page.status)
        assert statuses == [200, 200, 200, 429, 429]
        assert "Too many requests" in page.text and page.headers["Retry-After"] == "3600"
    assert await confirmations(forum.run) == 3
    sent = await deliver(forum.run, sink, 3)
    assert sorted(message.rcpt_tos[0] for message in sent) == [f"reader{n}@example.net" for n in range(3)]
