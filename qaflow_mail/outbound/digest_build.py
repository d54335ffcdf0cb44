"""One user's digest: what it shows (pure, from rows loaded for a batch), rendered and composed into one message.

Grouping. One digest per user and period across every category they follow in that mode, as Discourse sends
one summary. Announcements published in the window come first for users who have not muted them; on their
own they do not cause a digest (everyone got them by broadcast already), unless the user follows the
announcements category itself in this mode. The user's own posts are left out.

Unsubscribing. A digest covers several categories. Its List-Unsubscribe (the mail client's one button) carries
a DIGEST token that stops the whole digest: every subscription of the user in that mode is muted. The footer
gives one link per category, each turning only that category off. Every one of these tokens carries the user's
token generation, so ``user rotate-tokens`` (or a new join) voids them all.

Replies. Each topic carries its own ``reply+<token>`` address, bound to the latest post of that topic the
digest shows (the opening post for a topic without new replies) and to the recipient, so a reply threads under
what the reader just read. The digest itself has a Message-ID we mint, recorded in ``message_refs`` (kind
``queries.DIGEST_REF_KIND``, no post); ``queries.find_digest_reference`` recognises a reply to the digest as a
whole, which is refused with ``replies.DIGEST_REPLY``.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import EmailMessage
from functools import lru_cache
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from qaflow_mail.config import Settings
from qaflow_mail.db.models import OutboxKind
from qaflow_mail.mail.addresses import FROM_LOCAL_PART
from qaflow_mail.mail.compose import ListHeaders, compose, list_id_value, make_message_id, to_bytes
from qaflow_mail.mail.tokens import TokenKind, digest_ids, sign, unsubscribe_ids
from qaflow_mail.outbound.digest_schedule import Period
from qaflow_mail.outbound.fanout import MessagePrototype, simple_address
from qaflow_mail.outbound.outbox import OutgoingMessage
from qaflow_mail.outbound.render import Rendered, Renderer
from qaflow_mail.outbound.site_notice import user_bounce_address
from qaflow_mail.outbound.stored_bodies import StoredBody, values_json
from qaflow_mail.urls import reply_address, topic_url, unsubscribe_address, unsubscribe_url

DAILY_TEMPLATE = "digest/daily"
WEEKLY_TEMPLATE = "digest/weekly"
MESSAGE_ID_KIND = "digest"

EXCERPT_LINES = 4
EXCERPT_CHARS = 320
MAX_REPLIES_SHOWN = 5


@dataclass(frozen=True, slots=True)
class PostRow:
    """One post in a window, as loaded: only a prefix of the body."""

    id: int
    topic_id: int
    author_id: int
    author_name: str
    created_at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class TopicRow:
    id: int
    category_id: int
    category_name: str
    subject: str
    author_id: int
    author_name: str
    created_at: datetime
    opening_post_id: int
    is_announcement: bool


@dataclass(frozen=True, slots=True)
class DigestRecipient:
    user_id: int
    email: str
    name: str
    timezone: ZoneInfo
    show_announcements: bool
    token_generation: int = 0  # users.token_generation, signed into every unsubscribe token of the digest


@dataclass(frozen=True, slots=True)
class SubscriptionWindow:
    category_id: int
    category_slug: str
    category_name: str
    start: datetime  # exclusive
    end: datetime  # inclusive


class DigestTokens(Protocol):
    """The tokens a digest carries: one reply token per topic shown, one unsubscribe token per category."""

    def reply(self, post_id: int) -> str: ...

    def unsubscribe(self, category_id: int) -> str: ...


@dataclass(frozen=True, slots=True)
class SignedTokens:
    """The recipient's own tokens, signed."""

    settings: Settings
    recipient: DigestRecipient
    issued: date

    def reply(self, post_id: int) -> str:
        return sign(TokenKind.REPLY, (post_id, self.recipient.user_id), secret=self.settings.tokens.secret,
                    issued=self.issued)

    def unsubscribe(self, category_id: int) -> str:
        ids = unsubscribe_ids(self.recipient.user_id, category_id, self.recipient.token_generation)
        return sign(TokenKind.UNSUBSCRIBE, ids, secret=self.settings.tokens.secret, issued=self.issued)


class PlaceholderTokens:
    """Random stand-ins for a recipient's tokens, remembering which post or category each one stands for."""

    def __init__(self, nonce: str) -> None:
        self.nonce = nonce
        self.replies: dict[str, int] = {}  # placeholder -> post id
        self.unsubscribes: dict[str, int] = {}  # placeholder -> category id

    def reply(self, post_id: int) -> str:
        name = f"qfreply{self.nonce}p{post_id}x"
        self.replies[name] = post_id
        return name

    def unsubscribe(self, category_id: int) -> str:
        name = f"qfunsub{self.nonce}c{category_id}x"
        self.unsubscribes[name] = category_id
        return name


@dataclass(frozen=True, slots=True)
class DigestReply:
    author: str
    excerpt: str
    created: str


@dataclass(frozen=True, slots=True)
class DigestTopic:
    id: int
    title: str
    category: str
    author: str
    created: str
    excerpt: str  # the opening post's first lines ("" for an older topic shown for its replies)
    url: str
    reply_address: str
    replies: tuple[DigestReply, ...] = ()
    more_replies: int = 0

    @property
    def reply_count(self) -> int:
        return len(self.replies) + self.more_replies


@dataclass(frozen=True, slots=True)
class DigestUnsubscribe:
    category: str
    url: str
    mailto: str


@dataclass(frozen=True, slots=True)
class DigestContext:
    period: Period
    user_id: int
    email: str
    name: str
    timezone: str
    window_start: datetime
    window_end: datetime
    announcements: tuple[DigestTopic, ...]
    new_topics: tuple[DigestTopic, ...]
    active_topics: tuple[DigestTopic, ...]  # older topics with new replies
    omitted_topics: int
    categories: tuple[str, ...]
    unsubscribe: tuple[DigestUnsubscribe, ...]  # one per category; the first one goes into List-Unsubscribe
    site_name: str
    base_url: str
    token_generation: int = 0  # the recipient's, for the digest's own "stop this digest" token

    @property
    def is_empty(self) -> bool:
        """Nothing new from the followed categories (announcements alone reached everyone by broadcast)."""
        return not self.new_topics and not self.active_topics

    @property
    def reply_total(self) -> int:
        return sum(t.reply_count for t in (*self.new_topics, *self.active_topics))

    def template_values(self) -> dict[str, Any]:
        tz = ZoneInfo(self.timezone)
        return {
            "site": {"name": self.site_name, "base_url": self.base_url},
            "digest": self,
            "period": self.period.value,
            "recipient": {"name": self.name, "email": self.email},
            "since": _local(self.window_start, tz),
            "until": _local(self.window_end, tz),
            "new_topic_count": len(self.new_topics),
            "reply_count": self.reply_total,
            "unsubscribe_url": self.unsubscribe[0].url,
            "unsubscribe_mailto": self.unsubscribe[0].mailto,
        }


@lru_cache(maxsize=8192)  # pure, and a batch's digests show the same posts over and over
def excerpt(text: str, *, lines: int = EXCERPT_LINES, chars: int = EXCERPT_CHARS) -> str:
    """The first few non-blank lines of a post, at most `chars` characters, cut at a word with an ellipsis."""
    kept = [" ".join(line.split()) for line in text.replace("\r\n", "\n").split("\n") if line.strip()][:lines]
    joined = "\n".join(kept)
    more = len(kept) == lines and len([ln for ln in text.split("\n") if ln.strip()]) > lines
    if len(joined) > chars:
        joined = joined[:chars].rsplit(" ", 1)[0].rstrip() or joined[:chars]
        more = True
    return joined + (" …" if more else "")


@lru_cache(maxsize=8192)
def _local(moment: datetime, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return f"{local:%a} {local.day} {local:%b %Y}, {local:%H:%M}"


def build_digest(
    *,
    period: Period,
    recipient: DigestRecipient,
    windows: Sequence[SubscriptionWindow],
    topics: Mapping[int, TopicRow],
    posts: Sequence[PostRow],
    settings: Settings,
    issued: date,
    tokens: DigestTokens | None = None,
) -> DigestContext:
    """The digest of one user and period from the posts loaded for a batch (posts outside the user's windows
    and categories are ignored here). Pure: tokens are signed with `issued` as their issue day, unless `tokens`
    gives them (placeholders, for a digest shared by many recipients)."""
    tz = recipient.timezone
    window_of = {w.category_id: w for w in windows}
    earliest = min(w.start for w in windows)
    latest = max(w.end for w in windows)
    by_topic: dict[int, list[PostRow]] = defaultdict(list)
    announcement_openings: list[tuple[TopicRow, PostRow]] = []
    for post in posts:
        topic = topics.get(post.topic_id)
        if topic is None or post.author_id == recipient.user_id:
            continue
        window = window_of.get(topic.category_id)
        if topic.is_announcement and post.id == topic.opening_post_id:
            if (recipient.show_announcements or window is not None) and earliest < post.created_at <= latest:
                announcement_openings.append((topic, post))
            continue
        if window is not None and window.start < post.created_at <= window.end:
            by_topic[post.topic_id].append(post)

    token_source = tokens if tokens is not None else SignedTokens(settings, recipient, issued)

    def reply_to(post_id: int) -> str:
        return reply_address(settings, token_source.reply(post_id))

    def url(topic_id: int) -> str:
        return topic_url(settings, topic_id)

    announcements = tuple(
        DigestTopic(id=t.id, title=t.subject, category=t.category_name, author=t.author_name,
                    created=_local(p.created_at, tz), excerpt=excerpt(p.text), url=url(t.id),
                    reply_address=reply_to(p.id))
        for t, p in sorted(announcement_openings, key=lambda tp: (tp[1].created_at, tp[1].id))
    )
    # Choose the topics first (newest topics, then older topics by their latest reply, at most max_topics in all),
    # and only then build their entries: a busy window must not cost a token and an excerpt per topic left out.
    new_keys: list[tuple[datetime, int]] = []
    active_keys: list[tuple[datetime, int]] = []
    for topic_id, items in by_topic.items():
        items.sort(key=lambda p: (p.created_at, p.id))
        opens_here = any(p.id == topics[topic_id].opening_post_id for p in items)
        (new_keys if opens_here else active_keys).append((items[-1].created_at, topic_id))
    room = max(0, settings.digest.max_topics - len(announcements))
    kept_new_ids = [tid for _, tid in sorted(new_keys, reverse=True)[:room]]
    kept_active_ids = [tid for _, tid in sorted(active_keys, reverse=True)[: max(0, room - len(kept_new_ids))]]
    omitted = len(new_keys) + len(active_keys) - len(kept_new_ids) - len(kept_active_ids)

    def entry(topic_id: int) -> DigestTopic:
        topic, items = topics[topic_id], by_topic[topic_id]
        opening = next((p for p in items if p.id == topic.opening_post_id), None)
        replies = [p for p in items if p.id != topic.opening_post_id]
        shown = replies[-MAX_REPLIES_SHOWN:]
        return DigestTopic(
            id=topic.id, title=topic.subject, category=topic.category_name, author=topic.author_name,
            created=_local(topic.created_at, tz), excerpt=excerpt(opening.text) if opening else "",
            url=url(topic.id), reply_address=reply_to(items[-1].id),
            replies=tuple(DigestReply(author=p.author_name, excerpt=excerpt(p.text, lines=3, chars=240),
                                      created=_local(p.created_at, tz)) for p in shown),
            more_replies=len(replies) - len(shown),
        )

    kept_new = [entry(tid) for tid in kept_new_ids]
    kept_active = [entry(tid) for tid in kept_active_ids]

    ordered = sorted(windows, key=lambda w: w.category_slug)
    unsubscribe = tuple(
        DigestUnsubscribe(category=w.category_name, url=unsubscribe_url(settings, token),
                          mailto=unsubscribe_address(settings, token))
        for w in ordered
        for token in (token_source.unsubscribe(w.category_id),)
    )
    return DigestContext(
        period=period, user_id=recipient.user_id, email=recipient.email, name=recipient.name,
        timezone=tz.key, window_start=earliest, window_end=latest, announcements=announcements,
        new_topics=tuple(kept_new), active_topics=tuple(kept_active), omitted_topics=omitted,
        categories=tuple(w.category_name for w in ordered), unsubscribe=unsubscribe,
        site_name=settings.site.name, base_url=settings.site.base_url, token_generation=recipient.token_generation,
    )


def digest_message_id(user_id: int, period: Period, end: datetime, *, domain: str, salt: str) -> str:
    """Stable for (user, period, window end): a re-run mints the same id, so message_refs stays one row."""
    return make_message_id(MESSAGE_ID_KIND, f"{user_id}.{period.value}.{end.astimezone(UTC):%Y%m%dT%H%M%SZ}",
                           domain=domain, salt=salt)


def dedupe_key(user_id: int, period: Period, end: datetime) -> str:
    return f"digest:{user_id}:{period.value}:{end.astimezone(UTC).isoformat()}"


def template_for(period: Period) -> str:
    return DAILY_TEMPLATE if period is Period.DAILY else WEEKLY_TEMPLATE


def render_digest(renderer: Renderer, digest: DigestContext) -> Rendered:
    return renderer.render(template_for(digest.period), digest.template_values())


def digest_message(
    settings: Settings, digest: DigestContext, rendered: Rendered, *, now: datetime
) -> OutgoingMessage:
    """The composed digest as an outbox row; ValueError for an address compose cannot carry."""
    message_id = digest_message_id(digest.user_id, digest.period, digest.window_end, domain=settings.site.domain,
                                   salt=settings.site.message_id_salt)
    stop_token = sign(TokenKind.DIGEST, digest_ids(digest.user_id, digest.period.value, digest.token_generation),
                      secret=settings.tokens.secret, issued=now.date())
    message = _compose(settings, digest, rendered, message_id=message_id, stop_token=stop_token, now=now)
    return OutgoingMessage(
        kind=OutboxKind.DIGEST,
        dedupe_key=dedupe_key(digest.user_id, digest.period, digest.window_end),
        message_id=message_id,
        envelope_from=user_bounce_address(settings, digest.user_id, now=now),
        recipient=digest.email,
        raw=to_bytes(message),
        user_id=digest.user_id,
    )


def _compose(
    settings: Settings, digest: DigestContext, rendered: Rendered, *, message_id: str, stop_token: str,
    now: datetime,
) -> EmailMessage:
    domain = settings.site.domain
    stop = DigestUnsubscribe(category=f"{digest.period.value} digest", url=unsubscribe_url(settings, stop_token),
                             mailto=unsubscribe_address(settings, stop_token))
    return compose(
        from_name=f"{settings.site.name} digest",
        from_address=f"{FROM_LOCAL_PART}@{domain}",
        to=digest.email,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id=message_id,
        in_reply_to=None,
        references=(),
        reply_to=None,
        list_headers=ListHeaders(
            list_id=list_id_value(f"{settings.site.name} {digest.period.value} digest",
                                  slug=f"{digest.period.value}-digest", domain=domain),
            post=None,
            archive=settings.site.base_url,
            unsubscribe_mailto=stop.mailto,
            # RFC 8058 one-click needs HTTPS; a plain-http base URL (local use) keeps only the mailto.
            unsubscribe_https=stop.url if stop.url.lower().startswith("https://") else None,
        ),
        date=now,
    )


class SharedDigest:
    """One digest built, rendered and composed once for every recipient who would get the same one (same
    windows, time zone and announcement setting, and no post of their own in it), with placeholders where each
    recipient's address, name, Message-ID and tokens go. `message_for` fills them in: signing a recipient's
    tokens and encoding the few lines that hold them, instead of building, rendering and composing again."""

    def __init__(
        self, *, period: Period, windows: Sequence[SubscriptionWindow], timezone: ZoneInfo, show_announcements: bool,
        topics: Mapping[int, TopicRow], posts: Sequence[PostRow], settings: Settings, renderer: Renderer,
        now: datetime,
    ) -> None:
        nonce = secrets.token_hex(8)
        self.settings = settings
        self.now = now
        self.period = period
        self._email = f"qfrcpt{nonce}@placeholder.invalid"
        self._name = f"qfname{nonce}"
        self._message_id = f"qfmid{nonce}@placeholder.invalid"
        self._stop = f"qfstop{nonce}"
        self._tokens = PlaceholderTokens(nonce)
        nobody = DigestRecipient(user_id=-1, email=self._email, name=self._name, timezone=timezone,
                                 show_announcements=show_announcements)
        self.digest = build_digest(period=period, recipient=nobody, windows=windows, topics=topics, posts=posts,
                                   settings=settings, issued=now.date(), tokens=self._tokens)
        self.prototype: MessagePrototype | None = None
        self._stored: StoredBody | None = None  # the prototype as its rows are queued (stored once)
        if not self.digest.is_empty:
            rendered = render_digest(renderer, self.digest)
            message = _compose(settings, self.digest, rendered, message_id=self._message_id,
                               stop_token=self._stop, now=now)
            self.prototype = MessagePrototype(message, (
                self._email, self._name, self._message_id, self._stop, *self._tokens.replies,
                *self._tokens.unsubscribes))
            self._stored = StoredBody(self.prototype)

    def message_for(self, recipient: DigestRecipient) -> OutgoingMessage:
        """This digest for one recipient; ValueError when it cannot be filled in for them (compose them one)."""
        if self.prototype is None or self._stored is None:
            raise ValueError("an empty digest is not sent")
        if not simple_address(recipient.email):
            raise ValueError("an address the shared digest cannot carry as is")
        settings, digest, now = self.settings, self.digest, self.now
        secret, issued = settings.tokens.secret, now.date()
        message_id = digest_message_id(recipient.user_id, self.period, digest.window_end,
                                       domain=settings.site.domain, salt=settings.site.message_id_salt)
        tokens = SignedTokens(settings, recipient, issued)
        values = {
            self._email: recipient.email,
            self._name: recipient.name,
            self._message_id: message_id,
            self._stop: sign(TokenKind.DIGEST, digest_ids(recipient.user_id, self.period.value,
                                                          recipient.token_generation), secret=secret, issued=issued),
        }
        values.update({name: tokens.reply(post_id) for name, post_id in self._tokens.replies.items()})
        values.update({name: tokens.unsubscribe(category_id)
                       for name, category_id in self._tokens.unsubscribes.items()})
        self.prototype.check_values(values)  # now, so that a reader the shared bytes cannot carry is composed alone
        return OutgoingMessage(
            kind=OutboxKind.DIGEST,
            dedupe_key=dedupe_key(recipient.user_id, self.period, digest.window_end),
            message_id=message_id,
            envelope_from=user_bounce_address(settings, recipient.user_id, now=now),
            recipient=recipient.email,
            raw=values_json(values),
            user_id=recipient.user_id,
            body=self._stored,
        )
