"""A digest shared by many recipients and filled in per recipient says exactly what one composed for that
recipient alone says: the same headers, the same decoded text and HTML, their own tokens and nothing else's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest

from qaflow_mail.config import DigestSettings, Settings, SiteSettings, TokensSettings
from qaflow_mail.mail.tokens import TokenKind, verify
from qaflow_mail.outbound.digest_build import (
    DigestRecipient,
    PostRow,
    SharedDigest,
    SubscriptionWindow,
    TopicRow,
    build_digest,
    digest_message,
    render_digest,
)
from qaflow_mail.outbound.digest_schedule import Period
from qaflow_mail.outbound.fanout import MessagePrototype
from qaflow_mail.outbound.render import Renderer

SECRET = "shared-digest-secret"
START = datetime(2025, 6, 1, 7, tzinfo=UTC)
END = START + timedelta(days=1)
NOW = END + timedelta(minutes=5)
ZONE = ZoneInfo("Europe/Berlin")


def settings(base_url: str = "https://forum.test") -> Settings:
    return Settings(site=SiteSettings(name="QAFlow", domain="forum.test", base_url=base_url),
                    tokens=TokensSettings(secret=SECRET), digest=DigestSettings(max_topics=10))


def forum() -> tuple[dict[int, TopicRow], list[PostRow], list[SubscriptionWindow]]:
    topics = {
        n: TopicRow(id=n, category_id=1 + n % 2, category_name=f"Category {1 + n % 2}",
                    subject=f"Topic {n} <b>with</b> ünïcode", author_id=90 + n, author_name=f"Author {n} & co",
                    created_at=START + timedelta(hours=n), opening_post_id=n * 100, is_announcement=False)
        for n in range(1, 7)
    }
    posts: list[PostRow] = []
    for n in topics:
        posts.append(PostRow(id=n * 100, topic_id=n, author_id=90 + n, author_name=f"Author {n} & co",
                             created_at=START + timedelta(hours=n), text=f"Opening {n}: café <script>x</script>\n"
                             + "A long line of words that goes on and on past the width of a line. " * 3))
        posts += [PostRow(id=n * 100 + r, topic_id=n, author_id=80 + r, author_name=f"Replier {r}",
                          created_at=START + timedelta(hours=n, minutes=r), text=f"Reply {r} to {n}   ")
                  for r in range(1, 4)]
    windows = [SubscriptionWindow(category_id=c, category_slug=f"cat{c}", category_name=f"Category {c}", start=START,
                                  end=END) for c in (1, 2)]
    return topics, posts, windows


def parsed(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def bodies(message: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.walk() if not part.is_multipart()}


def on_its_own(config: Settings, recipient: DigestRecipient) -> bytes:
    topics, posts, windows = forum()
    digest = build_digest(period=Period.DAILY, recipient=recipient, windows=windows, topics=topics, posts=posts,
                          settings=config, issued=NOW.date())
    return digest_message(config, digest, render_digest(Renderer(), digest), now=NOW).raw


def shared(config: Settings) -> SharedDigest:
    topics, posts, windows = forum()
    return SharedDigest(period=Period.DAILY, windows=windows, timezone=ZONE, show_announcements=True, topics=topics,
                        posts=posts, settings=config, renderer=Renderer(), now=NOW)


@pytest.mark.parametrize("base_url", ["https://forum.test", "http://127.0.0.1:8080"])
@pytest.mark.parametrize("recipient", [
    DigestRecipient(user_id=7, email="bob@example.org", name="Bob", timezone=ZONE, show_announcements=True),
    DigestRecipient(user_id=123456789, email="o'neil+x@mail.example.org", name="Zoë <O'Neil> & \"Co\"",
                    timezone=ZONE, show_announcements=True, token_generation=3),
])
def test_the_shared_digest_filled_in_equals_the_digest_composed_alone(
    base_url: str, recipient: DigestRecipient
) -> None:
    config = settings(base_url)
    alone = parsed(on_its_own(config, recipient))
    message = shared(config).message_for(recipient)
    assert message.body is not None  # stored once, filled in as each row is sent
    raw = MessagePrototype.from_stored(message.body.data).fill_values(json.loads(message.raw))
    assert raw == message.whole()
    filled = parsed(raw)
    assert message.recipient == recipient.email and message.user_id == recipient.user_id
    assert message.message_id == alone["Message-ID"].strip("<>")
    for name in ("From", "To", "Subject", "Message-ID", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
                 "Date", "Precedence", "Auto-Submitted", "Content-Type"):
        if name == "Content-Type":
            assert filled.get_content_type() == alone.get_content_type() == "multipart/alternative"
        else:
            assert filled[name] == alone[name], name
    assert bodies(filled) == bodies(alone)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"placeholder" not in raw and b"qfreply" not in raw and b"qfname" not in raw


def test_each_recipient_gets_their_own_tokens() -> None:
    config = settings()
    digest = shared(config)
    first = DigestRecipient(user_id=7, email="bob@example.org", name="Bob", timezone=ZONE, show_announcements=True)
    second = DigestRecipient(user_id=8, email="eve@example.org", name="Eve", timezone=ZONE, show_announcements=True)
    texts = {r.user_id: bodies(parsed(digest.message_for(r).whole()))["text/plain"] for r in (first, second)}
    for user_id, text in texts.items():
        tokens = [word.split("+", 1)[1].split("@", 1)[0] for word in text.split() if word.startswith("reply+")]
        assert len(tokens) == 6
        for token in tokens:
            payload = verify(token, kind=TokenKind.REPLY, secrets=[SECRET], today=NOW.date(), max_age_days=None)
            assert payload.ids[1] == user_id
    assert texts[7] != texts[8]


def test_a_recipient_the_shared_bytes_cannot_carry_is_refused_for_composing_alone() -> None:
    odd = DigestRecipient(user_id=9, email="a b@example.org", name="A", timezone=ZONE, show_announcements=True)
    with pytest.raises(ValueError):
        shared(settings()).message_for(odd)
