"""Per-post notifications end to end over loopback: a post made by SMTP reaches a real SMTP sink with every header
the issue names, and replying to what was delivered posts into the same topic."""

from __future__ import annotations

import dataclasses
import email
import re
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    Category,
    CategorySubscription,
    MessageRef,
    Outbox,
    OutboxKind,
    Post,
    SubscriptionMode,
    UserAddress,
    UserStatus,
)
from qaflow_mail.mail.compose import to_bytes
from qaflow_mail.mail.tokens import TokenKind, sign, verify
from qaflow_mail.outbound.fanout import Placeholders, Recipient
from qaflow_mail.outbound.notify import NotificationBuilder, Threading, build_messages, notification_message_id
from qaflow_mail.server.app import Running
from qaflow_mail.services.notifications import notify_followers
from qaflow_mail.services.topics import latest_topics
from tests.fanout import delivered, fanout_done
from tests.sink import SinkMessage, SmtpSink
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
GENERAL = f"general@{DOMAIN}"
ALICE, BOB, CAROL, CAROL_ALT = "alice@example.org", "bob@example.net", "carol@example.com", "carol.alt@example.com"
DAVE, ERIN, FRANK, GINA = "dave@example.org", "erin@example.org", "frank@example.org", "gina@example.org"
STRANGER = "stranger@example.biz"


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    """The shared test settings, with an HTTPS site (RFC 8058 one-click) and delivery to the sink."""
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, base_url="https://forum.test"),
        outbound=dataclasses.replace(settings.outbound, transport="smtp", smtp_host="127.0.0.1",
                                     smtp_port=sink.port),
    )


async def seed(run: Running) -> None:
    now = datetime.now(UTC)
    async with run.deps.sessions() as session, session.begin():
        general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await queries.add_category(session, slug="help", name="Help", allow_strangers=False)
        modes = {
            ALICE: ("Alice", UserStatus.ACTIVE, SubscriptionMode.EACH),
            BOB: ("Bob", UserStatus.ACTIVE, SubscriptionMode.EACH),
            CAROL: ("Carol", UserStatus.ACTIVE, SubscriptionMode.EACH),
            DAVE: ("Dave", UserStatus.ACTIVE, SubscriptionMode.DAILY),
            ERIN: ("Erin", UserStatus.DISABLED, SubscriptionMode.EACH),
            FRANK: ("Frank", UserStatus.STAGED, SubscriptionMode.EACH),
            GINA: ("Gina", UserStatus.BOUNCING, SubscriptionMode.EACH),
        }
        for address, (name, status, mode) in modes.items():
            user = await queries.add_user(session, email=address, display_name=name, status=status, now=now)
            session.add(CategorySubscription(user_id=user.id, category_id=general.id, mode=mode, created_at=now))
            if address == CAROL:
                session.add(UserAddress(user_id=user.id, email=CAROL_ALT))
    await run.deps.categories.reload()


@pytest.fixture
async def forum(gateway: Running) -> Running:
    await seed(gateway)
    return gateway


async def deliver(run: Running, sink: SmtpSink, expected: int) -> list[SinkMessage]:
    return await delivered(run.deps, sink, expected)


async def user_id(run: Running, address: str) -> int:
    async with run.deps.sessions() as session:
        user = await queries.user_by_email(session, address)
    assert user is not None
    return user.id


async def post_by_message_id(run: Running, message_id: str) -> Post:
    async with run.deps.sessions() as session:
        post = await session.scalar(select(Post).where(Post.message_id == message_id))
    assert post is not None, f"no post {message_id}"
    return post


async def post_mail(run: Running, message: EmailMessage | bytes, *, sender: str, rcpt: str) -> int | None:
    conv = await send(run.smtp_port, message, mail_from=sender, rcpt_tos=[rcpt])
    return conv.data_code


def by_recipient(messages: list[SinkMessage]) -> dict[str, SinkMessage]:
    out = {}
    for message in messages:
        assert len(message.rcpt_tos) == 1, "one recipient per message"
        out[message.rcpt_tos[0]] = message
    return out


def token_of(address: str, prefix: str) -> str:
    match = re.fullmatch(rf"<?(?:mailto:)?{prefix}\+([a-z2-7]+)@forum\.test>?", address.strip())
    assert match, address
    return match.group(1)


def ids_of(token: str, kind: TokenKind, settings: Settings) -> tuple[int, ...]:
    return verify(token, kind=kind, secrets=[settings.tokens.secret], today=datetime.now(UTC).date(),
                  max_age_days=None).ids


def bare(value: object) -> str:
    return str(value).strip().strip("<>")


# ---------------------------------------------------------------------------------------------------------------


async def test_new_topic_reaches_each_subscriber_with_every_header(forum: Running, sink: SmtpSink) -> None:
    settings = forum.deps.settings
    topic_mail = make_mail(sender=f"Alice <{ALICE}>", to=GENERAL, subject="How do I reset my password?",
                           body="I forgot it.\n\nThanks!", message_id="<q1@client.test>")
    assert await post_mail(forum, topic_mail, sender=ALICE, rcpt=GENERAL) == 250

    delivered = by_recipient(await deliver(forum, sink, 2))
    # The author, the daily digest reader, and the disabled, staged and bouncing users get nothing.
    assert set(delivered) == {BOB, CAROL}
    post = await post_by_message_id(forum, "q1@client.test")
    bob_id = await user_id(forum, BOB)
    async with forum.deps.sessions() as session:
        general = await queries.category_by_slug(session, "general")
        refs = (await session.scalars(select(MessageRef))).all()
        rows = (await session.scalars(select(Outbox).order_by(Outbox.id))).all()
    assert general is not None

    mid = notification_message_id(post.id, domain=DOMAIN, salt=forum.deps.settings.site.message_id_salt)
    assert [(r.message_id, r.post_id) for r in refs] == [(mid, post.id)]
    carol_id = await user_id(forum, CAROL)
    assert {r.dedupe_key for r in rows} == {f"notify:{post.id}:{bob_id}", f"notify:{post.id}:{carol_id}"}
    assert {r.kind for r in rows} == {OutboxKind.NOTIFICATION.value}

    message = delivered[BOB]
    msg = message.parsed()
    assert msg["From"].addresses[0].display_name == "Alice via QAFlow Test"
    assert msg["From"].addresses[0].addr_spec == f"notifications@{DOMAIN}"
    assert msg["To"].addresses[0].addr_spec == BOB
    assert msg["Subject"] == "[General] How do I reset my password?"
    # One stable Message-ID per post, the same for every recipient; a first post starts a thread.
    assert bare(msg["Message-ID"]) == mid
    assert bare(delivered[CAROL].parsed()["Message-ID"]) == mid
    assert msg["In-Reply-To"] is None and msg["References"] is None

    reply_to = msg["Reply-To"].addresses[0].addr_spec
    assert len(reply_to.partition("@")[0]) <= 64
    assert ids_of(token_of(reply_to, "reply"), TokenKind.REPLY, settings) == (post.id, bob_id)
    assert ids_of(token_of(message.mail_from, "bounces"), TokenKind.BOUNCE, settings) == (bob_id, post.id)

    assert msg["List-Id"] == '"General" <general.forum.test>'
    assert msg["List-Post"] == f"<mailto:{GENERAL}>"
    assert msg["List-Archive"] == "<https://forum.test/c/general>"
    https, mailto = (part.strip() for part in str(msg["List-Unsubscribe"]).split(","))
    https_token = re.fullmatch(r"<https://forum\.test/unsubscribe/([a-z2-7]+)>", https)
    assert https_token is not None
    assert token_of(mailto, "unsubscribe") == https_token.group(1)
    assert ids_of(https_token.group(1), TokenKind.UNSUBSCRIBE, settings) == (bob_id, general.id)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Precedence"] == "list"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"

    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    body = text.get_content()
    assert body.startswith("I forgot it.")
    assert f"https://forum.test/t/{post.topic_id}" in body  # the footer: the topic, how to reply, how to stop
    assert reply_to in body
    assert f"https://forum.test/unsubscribe/{https_token.group(1)}" in body
    assert f"unsubscribe+{https_token.group(1)}@{DOMAIN}" in body
    assert f"https://forum.test/unsubscribe/{https_token.group(1)}" in html.get_content()
    # Carol's copy carries her own tokens, not Bob's.
    assert delivered[CAROL].parsed()["Reply-To"].addresses[0].addr_spec != reply_to


async def test_replies_by_reply_to_and_by_message_id_thread_into_the_topic(forum: Running, sink: SmtpSink) -> None:
    first = make_mail(sender=ALICE, to=GENERAL, subject="Which editor?", body="Vim or Emacs?",
                      message_id="<t1@client.test>")
    assert await post_mail(forum, first, sender=ALICE, rcpt=GENERAL) == 250
    notice = by_recipient(await deliver(forum, sink, 2))[BOB].parsed()
    root = await post_by_message_id(forum, "t1@client.test")
    root_mid = notification_message_id(root.id, domain=DOMAIN, salt=forum.deps.settings.site.message_id_salt)

    # Bob hits Reply: his client writes to the Reply-To address (this one keeps no threading headers at all).
    reply_to = notice["Reply-To"].addresses[0].addr_spec
    answer = make_mail(sender=f"Bob <{BOB}>", to=reply_to, subject=f"Re: {notice['Subject']}",
                       body="Emacs, obviously.", message_id="<b1@client.test>")
    assert await post_mail(forum, answer, sender=BOB, rcpt=reply_to) == 250
    second = await post_by_message_id(forum, "b1@client.test")
    assert (second.topic_id, second.parent_id) == (root.id and root.topic_id, root.id)

    # The reply is announced to Alice and Carol (not to Bob, its author), threaded under the first notification.
    delivered = by_recipient(await deliver(forum, sink, 2))
    assert set(delivered) == {ALICE, CAROL}
    to_carol = delivered[CAROL].parsed()
    second_mid = notification_message_id(second.id, domain=DOMAIN, salt=forum.deps.settings.site.message_id_salt)
    assert bare(to_carol["Message-ID"]) == second_mid
    # In-Reply-To names the mail Alice sent (her client holds it); References names it and ours (Carol holds ours).
    assert bare(to_carol["In-Reply-To"]) == "t1@client.test"
    assert str(to_carol["References"]).split() == [f"<{root_mid}>", "<t1@client.test>"]
    assert to_carol["Subject"] == "Re: [General] Which editor?"
    assert "Bob replied" in to_carol.get_body(("plain",)).get_content()

    # Carol replies to the category address; only the Message-ID she holds (In-Reply-To) says where it belongs.
    third_mail = make_mail(sender=CAROL, to=GENERAL, subject="Re: Which editor?", body="Neither: nano.",
                           message_id="<c1@client.test>", in_reply_to=f"<{second_mid}>")
    assert await post_mail(forum, third_mail, sender=CAROL, rcpt=GENERAL) == 250
    third = await post_by_message_id(forum, "c1@client.test")
    assert (third.topic_id, third.parent_id) == (root.topic_id, second.id)

    # Its notification references the whole chain the recipients hold: first post, then the parent.
    delivered = by_recipient(await deliver(forum, sink, 2))
    assert set(delivered) == {ALICE, BOB}
    to_bob = delivered[BOB].parsed()
    assert bare(to_bob["In-Reply-To"]) == "b1@client.test"
    assert str(to_bob["References"]).split() == [f"<{root_mid}>", "<t1@client.test>", f"<{second_mid}>",
                                                 "<b1@client.test>"]
    async with forum.deps.sessions() as session:
        listing = await latest_topics(session)
    assert [(t.id, t.replies + 1) for t in listing.rows] == [(root.topic_id, 3)]


async def test_reply_token_from_another_address_of_the_same_user_and_from_strangers(
    forum: Running, sink: SmtpSink
) -> None:
    first = make_mail(sender=ALICE, to=GENERAL, subject="Lunch?", body="Pizza at noon?",
                      message_id="<l1@client.test>")
    assert await post_mail(forum, first, sender=ALICE, rcpt=GENERAL) == 250
    carol_reply_to = by_recipient(await deliver(forum, sink, 2))[CAROL].parsed()["Reply-To"].addresses[0].addr_spec
    root = await post_by_message_id(forum, "l1@client.test")

    # Carol answers from her other registered address: still Carol, still this topic.
    ok = make_mail(sender=CAROL_ALT, to=carol_reply_to, subject="Re: Lunch?", body="Yes please.",
                   message_id="<c-alt@client.test>")
    assert await post_mail(forum, ok, sender=CAROL_ALT, rcpt=carol_reply_to) == 250
    posted = await post_by_message_id(forum, "c-alt@client.test")
    assert (posted.parent_id, posted.author_id) == (root.id, await user_id(forum, CAROL))

    # A stranger, and another registered user, holding Carol's address are refused with a reason.
    for sender, mid in ((STRANGER, "<s1@client.test>"), (DAVE, "<d1@client.test>")):
        refused = make_mail(sender=sender, to=carol_reply_to, subject="Re: Lunch?", body="Me too!", message_id=mid)
        conv = await send(forum.smtp_port, refused, mail_from=sender, rcpt_tos=[carol_reply_to])
        assert conv.data is not None
        code, text = conv.data
        assert code == 550 and text.startswith("5.7.1"), conv.data
        assert "reply from the address that received it" in text
    async with forum.deps.sessions() as session:
        refused_ids = ["s1@client.test", "d1@client.test"]
        assert await session.scalar(select(Post.id).where(Post.message_id.in_(refused_ids))) is None


async def test_tampered_or_expired_reply_token_is_refused_with_advice(forum: Running) -> None:
    settings = forum.deps.settings
    first = make_mail(sender=ALICE, to=GENERAL, subject="Q", body="Question?", message_id="<x1@client.test>")
    assert await post_mail(forum, first, sender=ALICE, rcpt=GENERAL) == 250
    post = await post_by_message_id(forum, "x1@client.test")
    bob_id = await user_id(forum, BOB)
    today = datetime.now(UTC).date()
    good = sign(TokenKind.REPLY, (post.id, bob_id), secret=settings.tokens.secret, issued=today)
    tampered = good[:5] + ("a" if good[5] != "a" else "b") + good[6:]
    expired = sign(TokenKind.REPLY, (post.id, bob_id), secret=settings.tokens.secret,
                   issued=today - timedelta(days=settings.tokens.reply_ttl_days + 1))
    forged = sign(TokenKind.REPLY, (post.id, bob_id), secret="not-the-site-secret", issued=today)
    for token in (tampered, expired, forged):
        address = f"reply+{token}@{DOMAIN}"
        mail = make_mail(sender=BOB, to=address, subject="Re: Q", body="Answer.")
        conv = await send(forum.smtp_port, mail, mail_from=BOB, rcpt_tos=[address])
        code, text = conv.rcpts[address]
        assert code == 550 and text.startswith("5.1.1"), conv.rcpts
        assert "recent notification" in text  # what to do about it
    async with forum.deps.sessions() as session:
        assert len((await session.scalars(select(Post))).all()) == 1


async def test_header_injection_reaches_the_wire_folded_and_encoded(forum: Running, sink: SmtpSink) -> None:
    async with forum.deps.sessions() as session, session.begin():
        alice = await queries.user_by_email(session, ALICE)
        assert alice is not None
        alice.display_name = "Jörg\r\nBcc: evil@example.com"
    # The subject decodes to a CR LF and a fake header; the name above holds one too.
    raw = (
        b"From: Alice <alice@example.org>\r\n"
        b"To: general@forum.test\r\n"
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe=0D=0ABcc:_evil@example.com=0D=0AX-Evil:_1?=\r\n"
        b"Message-ID: <inj1@client.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Hello.\r\n"
    )
    assert await post_mail(forum, raw, sender=ALICE, rcpt=GENERAL) == 250
    delivered = by_recipient(await deliver(forum, sink, 2))
    wire = delivered[BOB].raw
    head = wire.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    lines = head.split(b"\r\n")
    names = [line.split(b":", 1)[0].lower() for line in lines if line[:1] not in (b" ", b"\t")]
    assert b"bcc" not in names and b"x-evil" not in names
    assert names.count(b"subject") == 1 and names.count(b"from") == 1
    assert all(len(line) <= 998 for line in lines)
    subject_line = next(line for line in lines if line.lower().startswith(b"subject:"))
    assert b"=?utf-8?" in subject_line.lower()
    msg = email.message_from_bytes(wire, policy=policy.default)
    assert "\r" not in str(msg["Subject"]) and "\n" not in str(msg["Subject"])
    assert "Grüße" in str(msg["Subject"])
    display = msg["From"].addresses[0].display_name
    assert display.startswith("Jörg") and display.endswith(" via QAFlow Test")
    assert "\n" not in display and "\r" not in display
    assert msg["From"].addresses[0].addr_spec == f"notifications@{DOMAIN}"


async def test_post_html_is_escaped_unless_sanitised(forum: Running, sink: SmtpSink) -> None:
    plain = make_mail(sender=ALICE, to=GENERAL, subject="Markup",
                      body="Try <script>alert('x')</script> & <b>this</b>", message_id="<h1@client.test>")
    assert await post_mail(forum, plain, sender=ALICE, rcpt=GENERAL) == 250
    html_part = by_recipient(await deliver(forum, sink, 2))[BOB].parsed().get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;this&lt;/b&gt;" in html
    assert "<script" not in html and "<b>this</b>" not in html

    rich = EmailMessage()
    rich["From"] = ALICE
    rich["To"] = GENERAL
    rich["Subject"] = "Rich"
    rich["Message-ID"] = "<h2@client.test>"
    rich.set_content("<p>Hello <b>bold</b><script>alert(1)</script><img src=x onerror=alert(1)></p>", subtype="html")
    assert await post_mail(forum, rich, sender=ALICE, rcpt=GENERAL) == 250
    html_part = by_recipient(await deliver(forum, sink, 2))[BOB].parsed().get_body(("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<b>bold</b>" in html  # sanitised markup is kept as markup
    assert "<script" not in html and "onerror" not in html and "alert(1)" not in html.split("<body", 1)[1]


async def test_fan_out_is_idempotent_and_skips_unusable_addresses(forum: Running) -> None:
    """Running the service twice (a retried transaction) hands the outbox nothing new."""
    first = make_mail(sender=ALICE, to=GENERAL, subject="Once", body="Only once.", message_id="<o1@client.test>")
    assert await post_mail(forum, first, sender=ALICE, rcpt=GENERAL) == 250
    post = await post_by_message_id(forum, "o1@client.test")
    await fanout_done(forum.deps)
    async with forum.deps.sessions() as session, session.begin():
        again = await notify_followers(session, forum.deps, post, now=datetime.now(UTC))
    assert again == 2
    async with forum.deps.sessions() as session:
        rows = (await session.scalars(select(Outbox))).all()
        refs = (await session.scalars(select(MessageRef))).all()
    assert len(rows) == 2 and len(refs) == 1


# --- the per-recipient fast path matches composing each message from scratch (no database) --------------------


def _builder(
    text: str, html: str | None, placeholders: Placeholders, *, base_url: str = "https://forum.test"
) -> NotificationBuilder:
    settings = Settings()
    settings = dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, name="QAFlow Test", domain=DOMAIN, base_url=base_url),
        tokens=dataclasses.replace(settings.tokens, secret="unit-secret"),
    )
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    post = Post(id=42, topic_id=7, author_id=1, parent_id=41, body_text="x", message_id="m@x")
    category = Category(id=3, slug="general", name="Général")
    footer = (f"\n-- \nreply: reply+{placeholders.reply_token}@{DOMAIN}\n"
              f"stop: https://forum.test/unsubscribe/{placeholders.unsubscribe_token}\n")
    return NotificationBuilder(
        settings=settings, post=post, category=category,
        threading=Threading(message_id="post-42.abc@forum.test", in_reply_to="post-41.abc@forum.test",
                            references=("post-40.abc@forum.test", "post-41.abc@forum.test")),
        from_name="Zoë via QAFlow Test", subject="Re: [Général] Ünïcode ✓", text=text + footer,
        html=None if html is None else html + f'<a href="https://forum.test/unsubscribe/{placeholders.unsubscribe_token}">x</a>',
        placeholders=placeholders, issued=date(2026, 3, 1), now=now,
    )


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("plain ascii\n", None),  # 7bit, single part
        ("plain ascii\n", "<p>ascii</p>"),  # 7bit alternative
        ("héllo wörld, " * 40, "<p>héllo</p>"),  # quoted-printable
        ("日本語のテキスト" * 200, "<p>日本語</p>"),  # base64 text part
        ("long " * 300 + "\n", None),  # a line over 998 octets: not 7bit
    ],
)
def test_prototype_fill_matches_compose(text: str, html: str | None) -> None:
    placeholders = Placeholders.new()
    builder = _builder(text, html, placeholders)
    prototype = builder.prototype()
    recipients = [Recipient(5, "bob@example.net"), Recipient(123456789, "a.b+tag@sub.example.org")]
    messages = build_messages(builder, prototype, recipients)
    assert len(messages) == 2
    for message, rcpt in zip(messages, recipients, strict=True):
        reply = sign(TokenKind.REPLY, (42, rcpt.user_id), secret="unit-secret", issued=date(2026, 3, 1))
        unsub = sign(TokenKind.UNSUBSCRIBE, (rcpt.user_id, 3), secret="unit-secret", issued=date(2026, 3, 1))
        reference = to_bytes(builder.compose_for(rcpt.email, reply_token=reply, unsubscribe_token=unsub))
        fast = email.message_from_bytes(message.raw, policy=policy.default)
        slow = email.message_from_bytes(reference, policy=policy.default)
        assert [(k, str(v)) for k, v in fast.items() if k != "Content-Type"] == [
            (k, str(v)) for k, v in slow.items() if k != "Content-Type"  # the boundary differs
        ]
        fast_parts = [p for p in fast.walk() if not p.is_multipart()]
        slow_parts = [p for p in slow.walk() if not p.is_multipart()]
        assert [(p.get_content_type(), p["Content-Transfer-Encoding"], p.get_content()) for p in fast_parts] == [
            (p.get_content_type(), p["Content-Transfer-Encoding"], p.get_content()) for p in slow_parts
        ]
        assert all(not p.defects for p in fast.walk())
        assert placeholders.reply_token.encode() not in message.raw
        assert placeholders.unsubscribe_token.encode() not in message.raw
        assert reply in fast_parts[0].get_content()
        assert max(len(line) for line in message.raw.split(b"\r\n")) <= 998
        assert b"\n" not in message.raw.replace(b"\r\n", b"")


def test_addresses_the_template_cannot_carry_are_composed_or_skipped() -> None:
    placeholders = Placeholders.new()
    builder = _builder("hello\n", None, placeholders)
    prototype = builder.prototype()
    odd = Recipient(7, '"odd,name"@example.org')  # a quoted local part: composed from scratch
    broken = Recipient(8, "no-at-sign")  # compose refuses it: skipped, the others still go
    fine = Recipient(9, "fine@example.org")
    messages = build_messages(builder, prototype, [odd, broken, fine])
    assert [m.recipient for m in messages] == [odd.email, fine.email]
    parsed = email.message_from_bytes(messages[0].raw, policy=policy.default)
    assert parsed["To"].addresses[0].addr_spec == '"odd,name"@example.org'


def test_plain_http_site_offers_only_the_mailto_unsubscribe() -> None:
    """RFC 8058 one-click needs HTTPS: a local http:// site keeps the mailto: and drops List-Unsubscribe-Post."""
    builder = _builder("hello\n", None, Placeholders.new(), base_url="http://127.0.0.1:8080")
    (message,) = build_messages(builder, builder.prototype(), [Recipient(5, "bob@example.net")])
    parsed = email.message_from_bytes(message.raw, policy=policy.default)
    assert re.fullmatch(r"<mailto:unsubscribe\+[a-z2-7]+@forum\.test>", str(parsed["List-Unsubscribe"]))
    assert parsed["List-Unsubscribe-Post"] is None
    assert "http://127.0.0.1:8080/unsubscribe/" not in str(parsed["List-Unsubscribe"])


def test_a_7bit_line_grown_past_998_octets_falls_back_to_compose() -> None:
    placeholders = Placeholders.new()
    tail = f" reply+{placeholders.reply_token}@{DOMAIN}"
    builder = _builder("y" * (998 - len(tail)) + tail + "\n", None, placeholders)  # exactly 998 octets: 7bit
    prototype = builder.prototype()
    rcpt = Recipient(123456789, "bob@example.net")  # a longer token than the placeholder
    (message,) = build_messages(builder, prototype, [rcpt])
    parsed = email.message_from_bytes(message.raw, policy=policy.default)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    reply = sign(TokenKind.REPLY, (42, rcpt.user_id), secret="unit-secret", issued=date(2026, 3, 1))
    assert f" reply+{reply}@{DOMAIN}" in parsed.get_content()
    assert max(len(line) for line in message.raw.split(b"\r\n")) <= 998
