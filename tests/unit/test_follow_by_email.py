"""The pure parts of joining from the web and of telling people how to join: the per-client limit, what counts as
an address on the form, the members-only refusal per category, the unsubscribed notice's way back and the
confirmation mail's link."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from qaflow_mail.config import Settings, SiteSettings, TokensSettings
from qaflow_mail.db.models import Category, SubscriptionMode
from qaflow_mail.outbound.render import MailTemplate, PageTemplate, Renderer
from qaflow_mail.replies import SENDER_NOT_ALLOWED
from qaflow_mail.server.web.client_limit import ClientLimiter, client_key
from qaflow_mail.server.web.follow import mail_address
from qaflow_mail.services.admission import members_only
from qaflow_mail.services.notices import unsubscribed_notice
from qaflow_mail.services.subscriptions import UnsubscribeResult, UnsubscribeStatus

SETTINGS = Settings(site=SiteSettings(name="QAFlow", domain="forum.example.org",
                                      base_url="https://forum.example.org"),
                    tokens=TokensSettings(secret="unit-secret"))


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the per-client limit -------------------------------------------------------------------------------------------


def test_a_client_gets_its_share_per_window_and_then_waits() -> None:
    ticks = Ticks()
    limiter = ClientLimiter(3, 3600.0, clock=ticks)
    assert [limiter.allow("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("192.0.2.2")  # another client has its own share
    ticks.now = 1800.0
    assert not limiter.allow("192.0.2.1")  # refusals are not counted, but the window still holds the first three
    ticks.now = 3600.5
    assert limiter.allow("192.0.2.1")  # the first three have left the window


def test_the_limiter_forgets_the_longest_idle_clients_first() -> None:
    ticks = Ticks()
    limiter = ClientLimiter(1, 3600.0, clock=ticks, max_clients=2)
    assert limiter.allow("a") and limiter.allow("b")
    assert not limiter.allow("a")  # "a" is now the most recently seen
    assert limiter.allow("c")  # "b" is forgotten to make room
    assert not limiter.allow("a") and not limiter.allow("c")
    assert limiter.allow("b")


@pytest.mark.parametrize(("remote", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # the same /64: one client
    ("::ffff:192.0.2.7", "192.0.2.7"),
    (None, "unknown"),
])
def test_clients_are_ipv4_addresses_or_ipv6_networks(remote: str | None, key: str) -> None:
    assert client_key(remote) == key


# --- what the form takes for an address -----------------------------------------------------------------------------


@pytest.mark.parametrize(("typed", "address"), [
    ("newcomer@example.net", "newcomer@example.net"),
    ("New.Comer@Example.NET", "New.Comer@example.net"),
    ("reader@bücher.example", "reader@xn--bcher-kva.example"),
])
def test_addresses_are_taken_in_a_form_we_can_send_to(typed: str, address: str) -> None:
    assert mail_address(typed) == address


@pytest.mark.parametrize("typed", [
    "", "not an address", "@example.net", "newcomer@", "newcomer@localhost", "newcomer@host.test",
    "New Comer <newcomer@example.net>", "newcomer@example.net\r\nBcc: victim@example.com",
    "a@b@example.net", "ü@example.net", "x" * 250 + "@example.net", "newcomer@[192.0.2.1]",
])
def test_what_is_not_an_address_is_refused(typed: str) -> None:
    assert mail_address(typed) is None


# --- the members-only refusal ---------------------------------------------------------------------------------------


def test_a_stranger_is_told_the_categorys_own_join_address_and_page() -> None:
    python = Category(slug="python", name="Python\r\n<b>", allow_strangers=False, private=False)
    reply = members_only(SETTINGS, python)
    assert reply == SENDER_NOT_ALLOWED.with_text(
        "Only members may post to python@forum.example.org; to join, send an empty email to "
        "python-join@forum.example.org and reply to the confirmation, or use \"Follow by email\" on "
        "https://forum.example.org/c/python"
    )
    assert reply.text.isascii() and "\n" not in reply.text and "register" not in reply.text


def test_a_private_category_names_no_page() -> None:
    staff = Category(slug="staff", name="Staff", allow_strangers=False, private=True)
    assert "/c/staff" not in members_only(SETTINGS, staff).text
    assert "staff-join@forum.example.org" in members_only(SETTINGS, staff).text


# --- the unsubscribed notice's way back -----------------------------------------------------------------------------


def _notice_text(result: UnsubscribeResult) -> str:
    outgoing = unsubscribed_notice(SETTINGS, Renderer(), result, now=datetime(2026, 3, 1, tzinfo=UTC),
                                   in_reply_to=None)
    message = message_from_bytes(outgoing.raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


@pytest.mark.parametrize(("result", "request_address"), [
    (UnsubscribeResult(UnsubscribeStatus.UNSUBSCRIBED, user_id=1, email="bob@example.net", category_id=3,
                       category_name="Python", category_slug="python"), "python-request@forum.example.org"),
    (UnsubscribeResult(UnsubscribeStatus.UNSUBSCRIBED, user_id=1, email="bob@example.net"),
     "announcements-request@forum.example.org"),
    (UnsubscribeResult(UnsubscribeStatus.UNSUBSCRIBED, user_id=1, email="bob@example.net",
                       digest_mode=SubscriptionMode.DAILY, category_name="Daily digest", category_slug="daily-digest"),
     None),
], ids=["category", "announcements", "digest"])
def test_the_unsubscribed_notice_names_the_request_address_that_undoes_it(
    result: UnsubscribeResult, request_address: str | None
) -> None:
    text = _notice_text(result)
    if request_address is None:
        assert "-request@" not in text
    else:
        assert f'subject "subscribe" to {request_address}' in text.replace("\r\n", "\n").replace("\n", " ")


# --- the confirmation mail and its pages ----------------------------------------------------------------------------


def test_the_confirmation_mail_carries_the_link_as_well_as_the_reply_address() -> None:
    rendered = Renderer().render(MailTemplate.NOTICE_CONFIRM_MEMBERSHIP, {
        "site": {"name": "QAFlow", "base_url": "https://forum.example.org"}, "action": "join", "target": "Python",
        "mode": "each", "confirm_address": "confirm+abc234@forum.example.org",
        "confirm_url": "https://forum.example.org/confirm/abc234", "expires": "2026-03-08 12:00 UTC",
        "page": "https://forum.example.org/c/python",
    })
    assert "https://forum.example.org/confirm/abc234" in rendered.text
    assert "confirm+abc234@forum.example.org" in rendered.text
    assert rendered.html is not None and 'href="https://forum.example.org/confirm/abc234"' in rendered.html


def test_the_pages_escape_what_was_typed_and_name_no_token() -> None:
    renderer = Renderer()
    site = {"name": "QAFlow", "base_url": "https://forum.example.org"}
    category = {"name": "Python <b>", "slug": "python"}
    typed = '"><script>alert(1)</script>'
    form = renderer.render_page(PageTemplate.FOLLOW_FORM, {
        "site": site, "category": category, "message": "That is not an email address", "follow_address": typed,
        "follow_mode": "daily", "back_url": "/c/python"})
    assert "<script>" not in form and "&lt;script&gt;" in form and "Python &lt;b&gt;" in form
    assert '<option value="daily" selected>' in form
    sent = renderer.render_page(PageTemplate.FOLLOW_SENT, {
        "site": site, "category": category, "address": "newcomer@example.net", "back_url": "/c/python"})
    assert "If <strong>newcomer@example.net</strong> can receive mail, a confirmation is on its way" in sent
    confirm = renderer.render_page(PageTemplate.MEMBERSHIP_CONFIRM, {
        "site": site, "action": "join", "target": "Python", "mode": "weekly", "email": "ne***@example.net",
        "action_url": "/confirm/abc234"})
    assert "Confirm: join Python as ne***@example.net" in confirm and "a weekly digest" in confirm
