"""The moderation queue: which posts wait for a moderator, who the moderators are, and approving or rejecting.

A post is held (posts.status "held", a held_posts row saying why) instead of published when:
- its author is a staged user (a stranger in an open category) and it is one of their first
  [moderation] first_posts posts;
- its category is moderated (``category set SLUG --moderated``);
- our own MTA says it is spam (X-Spam-Flag: YES, X-Spam-Status: Yes, rspamd's X-Spam: yes), or our MTA's
  Authentication-Results says dmarc=fail. Both are read only when [announce] trusted_authserv_id names our MTA
  and the topmost Authentication-Results is its own, and spam headers only above the topmost Received header
  (what our MTA added on receipt, never what the sender wrote);
- it carries more than [moderation] max_links links and its author has fewer than links_trusted_after_posts
  published posts.
Admins and the category's moderators are never held. A held post is never mailed, listed or shown.

Moderators (active admins, plus the category's own) get one mail per held post with its text, and decide by
replying to a moderate+<token>@ address with APPROVE or REJECT [reason], or with the CLI. The author is told
once that the post waits, and then the outcome. An approved post keeps its original time; its notifications go
out when it is approved. A rejected post stays recorded (status "rejected").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    Category,
    CategoryModerator,
    FanoutKind,
    HeldPost,
    ModerationDecision,
    OutboxKind,
    Post,
    PostStatus,
    Topic,
    User,
    UserStatus,
)
from qaflow_mail.deps import Deps
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.mail.content import Content, extract_content
from qaflow_mail.mail.dkim_check import parse_authentication_results, raw_headers
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.tokens import InvalidToken, TokenKind, sign, verify
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import MailTemplate, author_name
from qaflow_mail.outbound.site_notice import site_notice, user_bounce_address
from qaflow_mail.replies import (
    ALREADY_DECIDED,
    BAD_MODERATION_TOKEN,
    NO_MODERATION_DECISION,
    NOT_A_MODERATOR,
    Refusal,
)
from qaflow_mail.services import fanout_jobs
from qaflow_mail.urls import moderate_address

log = logging.getLogger(__name__)

QUOTED_LINES = 200
_LINK_RE = re.compile(r"\b(?:https?://|www\.)", re.IGNORECASE)
_DECISION_RE = re.compile(r"[\s*_\"'`]*(approve|reject)\b[ \t:,.-]*([^\n]*)", re.IGNORECASE)
_SPAM_YES = {"x-spam-flag": re.compile(r"^\s*yes\b", re.I), "x-spam-status": re.compile(r"^\s*yes\b", re.I),
             "x-spam": re.compile(r"^\s*yes\b", re.I)}


# ----------------------------------------------------------------------------------------------------------------
# Whether to hold (pure parts)


def trusted_mta_verdict(raw: bytes, *, authserv_id: str, spam_headers: bool) -> str | None:
    """Why our own MTA's headers say hold (spam, or dmarc=fail), or None. Only headers our MTA wrote count: the
    topmost Authentication-Results must carry ``authserv_id``, and spam headers must sit above the topmost
    Received header (added on receipt, not by the sender)."""
    if not authserv_id:
        return None
    headers = raw_headers(raw)
    topmost = next((value for name, value in headers if name == "authentication-results"), None)
    if topmost is None:
        return None
    server, results = parse_authentication_results(topmost)
    if server != authserv_id.strip().lower():
        return None
    if any(item.method == "dmarc" and item.result == "fail" for item in results):
        return "our MTA says dmarc=fail"
    if spam_headers:
        for name, value in headers:
            if name == "received":
                break
            pattern = _SPAM_YES.get(name)
            if pattern is not None and pattern.match(value):
                return f"our MTA marks it as spam ({name})"
    return None


def count_links(content: Content) -> int:
    return len(_LINK_RE.findall(content.text))


def decision_of(text: str) -> tuple[ModerationDecision, str] | None:
    """(approved or rejected, reason) from the first words of a moderator's reply, or None."""
    match = _DECISION_RE.match(text)
    if match is None:
        return None
    verb = match.group(1).lower()
    decision = ModerationDecision.APPROVED if verb == "approve" else ModerationDecision.REJECTED
    return decision, match.group(2).strip()[:1000]


# ----------------------------------------------------------------------------------------------------------------
# Moderators


async def is_moderator(session: AsyncSession, user: User, category_id: int) -> bool:
    if user.status != UserStatus.ACTIVE.value:
        return False
    if user.is_admin:
        return True
    found = await session.scalar(select(CategoryModerator.id).where(
        CategoryModerator.category_id == category_id, CategoryModerator.user_id == user.id))
    return found is not None


async def moderators(session: AsyncSession, category_id: int) -> list[User]:
    """Active admins and the category's own moderators, by id."""
    own = select(CategoryModerator.user_id).where(CategoryModerator.category_id == category_id)
    return list((await session.scalars(
        select(User).where(User.status == UserStatus.ACTIVE.value, or_(User.is_admin.is_(True), User.id.in_(own)))
        .order_by(User.id)
    )).all())


async def add_moderator(session: AsyncSession, *, category: Category, user: User) -> bool:
    """Make ``user`` a moderator of ``category``; False when they were one already."""
    if await session.scalar(select(CategoryModerator.id).where(
            CategoryModerator.category_id == category.id, CategoryModerator.user_id == user.id)) is not None:
        return False
    session.add(CategoryModerator(category_id=category.id, user_id=user.id))
    await session.flush()
    return True


# ----------------------------------------------------------------------------------------------------------------
# Holding


async def hold_reason(
    session: AsyncSession, settings: Settings, *, author: User, category: Category, raw: bytes, content: Content,
    exclude_post_id: int | None = None,
) -> str | None:
    """Why a post by ``author`` in ``category`` must wait for a moderator, or None to publish it."""
    if await is_moderator(session, author, category.id):
        return None
    moderation = settings.moderation
    if category.moderated:
        return f"category {category.slug} is moderated"
    earlier = select(func.count(Post.id)).where(Post.author_id == author.id)
    if exclude_post_id is not None:
        earlier = earlier.where(Post.id != exclude_post_id)
    if author.status == UserStatus.STAGED.value and int(await session.scalar(earlier) or 0) < moderation.first_posts:
        return f"a first post by a stranger (first {moderation.first_posts} are moderated)"
    verdict = trusted_mta_verdict(raw, authserv_id=settings.announce.trusted_authserv_id,
                                  spam_headers=moderation.spam_headers)
    if verdict is not None:
        return verdict
    links = count_links(content)
    if links > moderation.max_links:
        published = int(await session.scalar(earlier.where(Post.status == PostStatus.PUBLISHED.value)) or 0)
        if published < moderation.links_trusted_after_posts:
            return f"{links} links from an author with {published} published posts"
    return None


@dataclass(frozen=True, slots=True)
class PutOnHold:
    """A post just held, and what the mails about it name."""

    held: HeldPost
    topic: Topic
    category: Category
    author: User


async def put_on_hold(session: AsyncSession, *, post: Post, reason: str, now: datetime) -> PutOnHold:
    """Mark ``post`` held with its reason (a pending HeldPost row); who is told, and how, is the caller's."""
    post.status = PostStatus.HELD.value
    held = HeldPost(post_id=post.id, reason=reason[:2000], held_at=now, decision=ModerationDecision.PENDING.value)
    session.add(held)
    await session.flush()
    topic = await session.get(Topic, post.topic_id)
    assert topic is not None
    category = await session.get(Category, topic.category_id)
    author = await session.get(User, post.author_id)
    assert category is not None and author is not None
    return PutOnHold(held=held, topic=topic, category=category, author=author)


async def hold(
    session: AsyncSession, deps: Deps, *, post: Post, reason: str, parsed: ParsedMail | None, now: datetime
) -> HeldPost:
    """Hold ``post``: status held, its reason kept, one mail to each moderator, and the author told once."""
    put = await put_on_hold(session, post=post, reason=reason, now=now)
    held, category, author = put.held, put.category, put.author
    messages = [moderator_mail(deps, post=post, category=category, author=author, moderator=m, reason=held.reason,
                               mail_key=f"moderate:{post.id}", now=now)
                for m in await moderators(session, category.id)]
    messages.append(_author_mail(deps, post=post, author=author, category=category, outcome="held", reason="",
                                 in_reply_to=None if parsed is None or parsed.message_id_synthesized
                                 else parsed.message_id, now=now))
    await enqueue(session, messages, now=now)
    log.info("moderation.held post_id=%s category=%s moderators=%d reason=%s", post.id, category.slug,
             len(messages) - 1, reason)
    return held


def _site(settings: Settings) -> dict[str, str]:
    return {"name": settings.site.name, "base_url": settings.site.base_url}


def moderator_mail(
    deps: Deps, *, post: Post, category: Category, author: User, moderator: User, reason: str, mail_key: str,
    now: datetime,
) -> OutgoingMessage:
    """One moderator's mail about a held post: its text, why it waits, and a signed address to answer APPROVE or
    REJECT to. `mail_key` names the mail (its Message-ID and outbox dedupe key): one per key is ever queued."""
    settings = deps.settings
    token = sign(TokenKind.MODERATE, (post.id, moderator.id), secret=settings.tokens.secret, issued=now.date())
    reply_to = moderate_address(settings, token)
    lines = post.body_text.splitlines()
    rendered = deps.renderer.render(MailTemplate.NOTICE_MODERATE, {
        "site": _site(settings),
        "category": {"name": category.name, "slug": category.slug},
        "post": {"id": post.id, "subject": post.subject, "author_name": author_name(author),
                 "author_email": author.email},
        "reason": reason,
        "quoted_lines": lines[:QUOTED_LINES],
        "omitted_lines": max(len(lines) - QUOTED_LINES, 0),
        "moderate_address": reply_to,
    })
    message_id = make_message_id("moderate", f"{mail_key.replace(':', '.')}.{moderator.id}",
                                 domain=settings.site.domain, salt=settings.site.message_id_salt)
    raw = site_notice(settings, to=moderator.email, rendered=rendered, message_id=message_id, in_reply_to=None,
                      now=now, reply_to=reply_to)
    return OutgoingMessage(kind=OutboxKind.NOTICE, dedupe_key=f"{mail_key}:{moderator.id}",
                           message_id=message_id, envelope_from=user_bounce_address(settings, moderator.id, now=now),
                           recipient=moderator.email, raw=raw, user_id=moderator.id, post_id=post.id)


def _author_mail(
    deps: Deps, *, post: Post, author: User, category: Category, outcome: str, reason: str, in_reply_to: str | None,
    now: datetime,
) -> OutgoingMessage:
    settings = deps.settings
    rendered = deps.renderer.render(MailTemplate.NOTICE_MODERATED, {
        "site": _site(settings),
        "category": {"name": category.name, "slug": category.slug},
        "post": {"id": post.id, "subject": post.subject},
        "outcome": outcome,  # held | approved | rejected
        "reason": reason,
    })
    message_id = make_message_id(f"moderated-{outcome}", str(post.id), domain=settings.site.domain,
                                 salt=settings.site.message_id_salt)
    raw = site_notice(settings, to=author.email, rendered=rendered, message_id=message_id, in_reply_to=in_reply_to,
                      now=now)
    return OutgoingMessage(kind=OutboxKind.NOTICE, dedupe_key=f"moderated:{outcome}:{post.id}",
                           message_id=message_id, envelope_from=user_bounce_address(settings, author.id, now=now),
                           recipient=author.email, raw=raw, user_id=author.id, post_id=post.id)


# ----------------------------------------------------------------------------------------------------------------
# Deciding


@dataclass(frozen=True, slots=True)
class Decided:
    post: Post
    decision: ModerationDecision


@dataclass(frozen=True, slots=True)
class HeldSummary:
    post_id: int
    category: str
    subject: str
    author: str
    reason: str
    held_at: datetime
    excerpt: str


async def pending(session: AsyncSession) -> list[HeldSummary]:
    rows = await session.execute(
        select(HeldPost, Post, Category.slug, User.email)
        .join(Post, Post.id == HeldPost.post_id)
        .join(Topic, Topic.id == Post.topic_id)
        .join(Category, Category.id == Topic.category_id)
        .join(User, User.id == Post.author_id)
        .where(HeldPost.decision == ModerationDecision.PENDING.value)
        .order_by(HeldPost.held_at, HeldPost.id)
    )
    return [HeldSummary(post_id=post.id, category=slug, subject=post.subject, author=email, reason=held.reason,
                        held_at=held.held_at, excerpt=" ".join(post.body_text.split())[:200])
            for held, post, slug, email in rows]


async def decide(
    session: AsyncSession, deps: Deps, *, post_id: int, decision: ModerationDecision, moderator: User | None,
    reason: str = "", now: datetime,
) -> Decided | Refusal:
    """Approve (publish, notify) or reject one held post; ``moderator`` None is the CLI."""
    held = await session.scalar(select(HeldPost).where(HeldPost.post_id == post_id).with_for_update())
    post = await session.get(Post, post_id)
    if held is None or post is None:
        return Refusal(BAD_MODERATION_TOKEN, f"post {post_id} is not held")
    if held.decision != ModerationDecision.PENDING.value:
        return Refusal(ALREADY_DECIDED, f"post {post_id} already {held.decision}")
    held.decision = decision.value
    held.decided_at = now
    held.decided_by = None if moderator is None else moderator.id
    held.rejection_reason = reason if decision is ModerationDecision.REJECTED else ""
    topic = await session.get(Topic, post.topic_id)
    author = await session.get(User, post.author_id)
    assert topic is not None and author is not None
    category = await session.get(Category, topic.category_id)
    assert category is not None
    if decision is ModerationDecision.APPROVED:
        post.status = PostStatus.PUBLISHED.value
        # Its notifications go out now, by the same fan-out job a post published at once gets.
        await fanout_jobs.enqueue(session, kind=FanoutKind.POST, target_id=post.id, now=now)
    else:
        post.status = PostStatus.REJECTED.value
    await enqueue(session, [_author_mail(deps, post=post, author=author, category=category, outcome=decision.value,
                                         reason=held.rejection_reason, in_reply_to=None, now=now)], now=now)
    log.info("moderation.%s post_id=%s by=%s", decision.value, post.id, "cli" if moderator is None else moderator.id)
    return Decided(post=post, decision=decision)


async def decide_by_mail(
    session: AsyncSession, deps: Deps, *, token: str, reply: ParsedMail, now: datetime
) -> Decided | Refusal:
    """A moderator's reply to moderate+<token>@: APPROVE or REJECT [reason] as its first words."""
    settings = deps.settings
    try:
        payload = verify(token, kind=TokenKind.MODERATE, secrets=settings.tokens.secrets, today=now.date(),
                         max_age_days=settings.tokens.reply_ttl_days)
    except InvalidToken as exc:
        return Refusal(BAD_MODERATION_TOKEN, f"moderation token: {exc}")
    post_id, moderator_id = payload.ids
    sender = await queries.user_by_email(session, reply.from_address) if reply.from_address else None
    post = await session.get(Post, post_id)
    topic = None if post is None else await session.get(Topic, post.topic_id)
    if sender is None or sender.id != moderator_id or topic is None \
            or not await is_moderator(session, sender, topic.category_id):
        return Refusal(NOT_A_MODERATOR, f"moderation of post {post_id} from {reply.from_address or '(no From)'}")
    decided = decision_of(extract_content(reply).text)
    if decided is None:
        return Refusal(NO_MODERATION_DECISION, f"moderation of post {post_id}: no APPROVE or REJECT")
    decision, reason = decided
    return await decide(session, deps, post_id=post_id, decision=decision, moderator=sender, reason=reason, now=now)

