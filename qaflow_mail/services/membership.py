"""Joining and leaving by mail, with double opt-in, and the other -request@ commands (mode, notify, status, help).

A join or leave asked for by mail (or by a page's "Follow by email" form) changes nothing yet: it sends a
confirmation to the address itself, with a confirm+<token>@ Reply-To and a <base_url>/confirm/<token> link (a
JOIN token naming one confirmation_requests row, valid [subscriptions] confirm_ttl_days, single use). Only a
reply from that address, or a POST to that link (which only the address's owner received), does it. A
stranger becomes an active user then, named from the From of their request (from the address alone when asked
on the web). So nobody can subscribe someone else, and a forged request costs its
victim at most one confirmation per address, category, kind and day (MAX_CONFIRMATIONS_PER_DAY in all);
automatic mail never gets this far (the routes start with guard_loops).

A -request@ "mode" or "notify" changes a member's mail at once only when our own MTA authenticated the From
(an aligned dkim or dmarc pass in the trusted Authentication-Results, as services.notices judges it); from
any other sender it takes the same confirmation as a join, so a forged "mode weekly" changes nothing unless
the owner of the address replies. "status" and "help" are answered at once: the answer goes to the From
address, so only its owner reads it.

A private category is mail only, not invitation only: it has no pages on the web (so no "Follow by email"
form either, and no mail of ours links to its page), but anyone may ask to join it by mail, under the same
double opt-in, since mail is the only way its members get its posts. "category" None throughout means the
site's announcements.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import (
    ANNOUNCEMENTS_SLUG,
    Category,
    ConfirmationKind,
    ConfirmationRequest,
    NotifyReplies,
    Outbox,
    OutboxKind,
    SubscriptionMode,
    User,
    UserStatus,
)
from qaflow_mail.deps import Deps
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.mail.dkim_check import raw_headers, trusted_authentication_results
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.request_commands import Command, Verb, join_mode, parse_commands
from qaflow_mail.mail.tokens import InvalidToken, TokenError, TokenKind, sign, verify
from qaflow_mail.outbound.outbox import OutgoingMessage, enqueue
from qaflow_mail.outbound.render import MailTemplate
from qaflow_mail.outbound.site_notice import site_notice, user_bounce_address
from qaflow_mail.replies import (
    BAD_MEMBERSHIP_CONFIRMATION,
    MEMBERSHIP_CONFIRMATION_EXPIRED,
    MEMBERSHIP_CONFIRMATION_USED,
    NO_FROM,
    NOT_THE_REQUESTER,
    UNKNOWN_RECIPIENT,
    Refusal,
)
from qaflow_mail.services import categories
from qaflow_mail.services.subscriptions import rotate_tokens, set_subscription
from qaflow_mail.urls import category_url, membership_address, membership_confirm_address, membership_confirm_url

log = logging.getLogger(__name__)

PENDING_WINDOW = timedelta(days=1)
MAX_CONFIRMATIONS_PER_DAY = 5  # per address, over all categories: a forged flood stops here
MAX_ANSWERS_PER_HOUR = 5  # -request@ answers per address


@dataclass(frozen=True, slots=True)
class Asked:
    sent: bool  # a confirmation was queued
    reason: str  # for the inbound record and the -request@ answer


@dataclass(frozen=True, slots=True)
class Confirmed:
    user: User
    kind: ConfirmationKind
    target: str  # the category's name, or "announcements"
    mode: str | None  # the subscription mode (join, mode) or the notify choice (notify); None for a leave
    slug: str | None = None  # the category's; None for the announcements
    page: str = ""  # where to go next on the web: the category's page, or the site's for a private one


def _target(category: Category | None) -> str:
    return "announcements" if category is None else category.name


def _slug(category: Category | None) -> str:
    return ANNOUNCEMENTS_SLUG if category is None else category.slug


def announcements_target(category: Category) -> Category | None:
    """The announcements category is not followed like others: joining it means receiving announcements."""
    return None if category.slug == ANNOUNCEMENTS_SLUG else category


def web_page(settings: Settings, category: Category | None) -> str:
    """The page a membership mail or page may link to: the category's, or the site's front page for the
    announcements and for a private (mail only) category, which has no page."""
    if category is None or category.private:
        return settings.site.base_url
    return category_url(settings, category.slug)


def _site(deps: Deps) -> dict[str, str]:
    return {"name": deps.settings.site.name, "base_url": deps.settings.site.base_url}


async def _pending(session: AsyncSession, *, email: str, category: Category | None, kind: ConfirmationKind,
                   now: datetime) -> bool:
    found = await session.scalar(
        select(ConfirmationRequest.id).where(
            ConfirmationRequest.email == email,
            ConfirmationRequest.category_id.is_(None) if category is None
            else ConfirmationRequest.category_id == category.id,
            ConfirmationRequest.kind == kind.value,
            ConfirmationRequest.confirmed_at.is_(None),
            ConfirmationRequest.created_at > now - PENDING_WINDOW,
        ).limit(1)
    )
    return found is not None


async def _sent_today(session: AsyncSession, *, email: str, now: datetime) -> int:
    count = await session.scalar(
        select(func.count(ConfirmationRequest.id)).where(
            ConfirmationRequest.email == email, ConfirmationRequest.created_at > now - PENDING_WINDOW
        )
    )
    return int(count or 0)


async def ask(
    session: AsyncSession, deps: Deps, *, kind: ConfirmationKind, email: str, display_name: str,
    category: Category | None, mode: SubscriptionMode | NotifyReplies, in_reply_to: str | None, now: datetime,
) -> Asked:
    """Queue a confirmation of joining (with ``mode``), leaving, changing the mode of ``category`` (to ``mode``)
    or the replies mailed (to the NotifyReplies ``mode``) to ``email``, unless one is pending already (one per
    address, category, kind and day) or the address had its share today."""
    email = queries.normalize_email(email)
    what = f"{kind.value} {_slug(category)}"
    if await _pending(session, email=email, category=category, kind=kind, now=now):
        return Asked(False, f"{what}: a confirmation is already waiting for {email} (at most one a day)")
    if await _sent_today(session, email=email, now=now) >= MAX_CONFIRMATIONS_PER_DAY:
        log.warning("membership.confirmations_limited to=%s", email)
        return Asked(False, f"{what}: {email} had {MAX_CONFIRMATIONS_PER_DAY} confirmations today")
    request = ConfirmationRequest(kind=kind.value, email=email, display_name=" ".join(display_name.split())[:200],
                                  category_id=None if category is None else category.id, mode=mode.value,
                                  created_at=now)
    session.add(request)
    await session.flush()
    settings = deps.settings
    token = sign(TokenKind.JOIN, (request.id, 0), secret=settings.tokens.secret, issued=now.date())
    reply_to = membership_confirm_address(settings, token)
    rendered = deps.renderer.render(MailTemplate.NOTICE_CONFIRM_MEMBERSHIP, {
        "site": _site(deps),
        "action": kind.value,
        "target": _target(category),
        "mode": mode.value,
        "confirm_address": reply_to,
        "confirm_url": membership_confirm_url(settings, token),
        "expires": f"{now + timedelta(days=settings.subscriptions.confirm_ttl_days):%Y-%m-%d %H:%M} UTC",
        "page": web_page(settings, category),
    })
    message_id = make_message_id("membership", str(request.id), domain=settings.site.domain,
                                 salt=settings.site.message_id_salt)
    raw = site_notice(settings, to=email, rendered=rendered, message_id=message_id, in_reply_to=in_reply_to,
                      now=now, reply_to=reply_to)
    await enqueue(session, [OutgoingMessage(
        kind=OutboxKind.CONFIRMATION, dedupe_key=f"membership:{request.id}", message_id=message_id,
        envelope_from="", recipient=email, raw=raw,
    )], now=now)
    log.info("membership.confirmation_sent request_id=%s kind=%s category=%s", request.id, kind.value,
             _slug(category))
    return Asked(True, f"{what}: confirmation {request.id} sent")


@dataclass(frozen=True, slots=True)
class Pending:
    """What a confirmation would do, as its web page shows it before anything changes."""

    kind: ConfirmationKind
    target: str  # the category's name, or "announcements"
    mode: str  # the subscription mode (join, mode) or the notify choice (notify)
    email: str


async def _open_request(
    session: AsyncSession, deps: Deps, *, token: str, now: datetime, lock: bool
) -> tuple[ConfirmationRequest, Category | None] | Refusal:
    """The confirmation_requests row ``token`` names and its category, while it may still be confirmed."""
    settings = deps.settings
    ttl = settings.subscriptions.confirm_ttl_days
    try:
        payload = verify(token, kind=TokenKind.JOIN, secrets=settings.tokens.secrets, today=now.date(),
                         max_age_days=ttl + 1)
    except InvalidToken as exc:
        reply_ = MEMBERSHIP_CONFIRMATION_EXPIRED if exc.reason is TokenError.EXPIRED else BAD_MEMBERSHIP_CONFIRMATION
        return Refusal(reply_, f"membership confirmation token: {exc}")
    query = select(ConfirmationRequest).where(ConfirmationRequest.id == payload.ids[0])
    request = await session.scalar(query.with_for_update() if lock else query)
    if request is None:
        return Refusal(BAD_MEMBERSHIP_CONFIRMATION, f"confirmation {payload.ids[0]} no longer exists")
    if request.confirmed_at is not None:
        return Refusal(MEMBERSHIP_CONFIRMATION_USED, f"confirmation {request.id} already used")
    if now > request.created_at + timedelta(days=ttl):
        return Refusal(MEMBERSHIP_CONFIRMATION_EXPIRED, f"confirmation {request.id} after its deadline")
    category = None if request.category_id is None else await session.get(Category, request.category_id)
    if request.category_id is not None and category is None:
        return Refusal(BAD_MEMBERSHIP_CONFIRMATION, f"confirmation {request.id}: its category is gone")
    return request, category


async def check_confirmation(session: AsyncSession, deps: Deps, *, token: str, now: datetime) -> Pending | Refusal:
    """What confirming ``token`` would do, or why it cannot be confirmed. Changes nothing (link scanners GET)."""
    opened = await _open_request(session, deps, token=token, now=now, lock=False)
    if isinstance(opened, Refusal):
        return opened
    request, category = opened
    return Pending(kind=ConfirmationKind(request.kind), target=_target(category), mode=request.mode,
                   email=request.email)


async def confirm(
    session: AsyncSession, deps: Deps, *, token: str, reply: ParsedMail | None, now: datetime
) -> Confirmed | Refusal:
    """Do the join or leave that ``token`` confirms: by a ``reply`` mailed from the address asked, or (``reply``
    None) by a POST to the confirmation link, which only the owner of that address was sent."""
    opened = await _open_request(session, deps, token=token, now=now, lock=True)
    if isinstance(opened, Refusal):
        return opened
    request, category = opened
    if reply is not None and queries.normalize_email(reply.from_address) != request.email:
        return Refusal(NOT_THE_REQUESTER, f"confirmation {request.id} from {reply.from_address or '(no From)'}")
    kind = ConfirmationKind(request.kind)
    user = await queries.user_by_email(session, request.email)
    if user is None and kind is not ConfirmationKind.JOIN:
        request.confirmed_at = now
        return Refusal(BAD_MEMBERSHIP_CONFIRMATION, f"confirmation {request.id}: {request.email} is not a user")
    if user is None:
        user = await queries.add_user(session, email=request.email, display_name=request.display_name, now=now)
    elif user.status == UserStatus.STAGED.value:
        user.status = UserStatus.ACTIVE.value  # the address answered: it is theirs
    request.confirmed_at = now
    choice = request.mode
    if kind is ConfirmationKind.NOTIFY:
        user.notify_replies = NotifyReplies(choice).value
    elif kind is ConfirmationKind.MODE:
        await change_mode(session, user=user, category=category, mode=SubscriptionMode(choice), now=now)
    else:
        mode = SubscriptionMode(choice) if kind is ConfirmationKind.JOIN else SubscriptionMode.MUTE
        if category is None:
            user.announcements_muted = kind is ConfirmationKind.LEAVE
        else:
            await set_subscription(session, user_id=user.id, category_id=category.id, mode=mode, now=now)
        if kind is ConfirmationKind.JOIN:
            rotate_tokens(user)  # links from before this join (perhaps the ones that unsubscribed them) stop working
        choice = mode.value
    in_reply_to = None if reply is None or reply.message_id_synthesized else reply.message_id
    await _tell_done(session, deps, user=user, kind=kind, category=category, mode=choice, in_reply_to=in_reply_to,
                     now=now)
    log.info("membership.confirmed request_id=%s user_id=%s kind=%s category=%s by=%s", request.id, user.id,
             kind.value, _slug(category), "link" if reply is None else "mail")
    return Confirmed(user=user, kind=kind, target=_target(category),
                     mode=None if kind is ConfirmationKind.LEAVE else choice,
                     slug=None if category is None else category.slug, page=web_page(deps.settings, category))


async def change_mode(
    session: AsyncSession, *, user: User, category: Category | None, mode: SubscriptionMode, now: datetime
) -> None:
    """Set ``user``'s mode for ``category`` (the announcements: muted or not); coming back from ``mute`` (or from
    no subscription) voids the unsubscribe links minted before, as a new join does."""
    if category is None:
        user.announcements_muted = mode is SubscriptionMode.MUTE
        return
    previous = await set_subscription(session, user_id=user.id, category_id=category.id, mode=mode, now=now)
    if previous in (None, SubscriptionMode.MUTE) and mode is not SubscriptionMode.MUTE:
        rotate_tokens(user)


def sender_authenticated(raw: bytes, parsed: ParsedMail, settings: Settings) -> bool:
    """Whether our own MTA's Authentication-Results vouches for the From domain (an aligned dkim or dmarc pass):
    only then may a -request@ mail change a member's mail without a confirmation."""
    verdict = trusted_authentication_results(raw_headers(raw), authserv_id=settings.announce.trusted_authserv_id,
                                             from_domain=parsed.from_address.rpartition("@")[2])
    return verdict.passed


async def _tell_done(
    session: AsyncSession, deps: Deps, *, user: User, kind: ConfirmationKind, category: Category | None,
    mode: str, in_reply_to: str | None, now: datetime,
) -> None:
    settings = deps.settings
    slug = _slug(category)
    rendered = deps.renderer.render(MailTemplate.NOTICE_MEMBERSHIP_DONE, {
        "site": _site(deps),
        "action": kind.value,
        "target": _target(category),
        "mode": mode,
        "post_address": None if category is None else f"{category.slug}@{settings.site.domain}",
        "leave_address": membership_address(settings, slug, "leave"),
        "join_address": membership_address(settings, slug, "join"),
        "request_address": membership_address(settings, slug, "request"),
    })
    key = f"membership-done:{user.id}:{slug}:{kind.value}:{now:%Y%m%d%H%M%S}"
    message_id = make_message_id("membership-done", hashlib.sha256(key.encode()).hexdigest()[:24],
                                 domain=settings.site.domain, salt=settings.site.message_id_salt)
    raw = site_notice(settings, to=user.email, rendered=rendered, message_id=message_id, in_reply_to=in_reply_to,
                      now=now)
    await enqueue(session, [OutgoingMessage(
        kind=OutboxKind.NOTICE, dedupe_key=key, message_id=message_id,
        envelope_from=user_bounce_address(settings, user.id, now=now), recipient=user.email, raw=raw,
        user_id=user.id,
    )], now=now)


# ----------------------------------------------------------------------------------------------------------------
# <slug>-request@ commands


@dataclass(frozen=True, slots=True)
class CommandResult:
    line: str
    outcome: str


async def run_commands(
    session: AsyncSession, deps: Deps, *, category: Category, parsed: ParsedMail, commands: tuple[Command, ...],
    now: datetime, trusted: bool = False,
) -> list[CommandResult]:
    """Do each command for the sender of ``parsed`` and say what it did (no commands: the help). ``trusted``: our
    MTA authenticated the From (``sender_authenticated``), so mode and notify changes need no confirmation."""
    target = announcements_target(category)
    email = queries.normalize_email(parsed.from_address)
    in_reply_to = None if parsed.message_id_synthesized else parsed.message_id
    default = categories.join_default_mode(category, deps.settings.subscriptions.default_mode)
    results: list[CommandResult] = []
    for command in commands or (Command(Verb.HELP, None, "(no command found)"),):
        if command.error:
            results.append(CommandResult(command.line, f"not done: {command.error}"))
            continue
        outcome = await _run_one(session, deps, command=command, email=email, display_name=parsed.from_name,
                                 category=target, default=default, in_reply_to=in_reply_to, now=now,
                                 trusted=trusted)
        results.append(CommandResult(command.line, outcome))
    return results


async def _run_one(
    session: AsyncSession, deps: Deps, *, command: Command, email: str, display_name: str,
    category: Category | None, default: SubscriptionMode, in_reply_to: str | None, now: datetime, trusted: bool,
) -> str:
    verb = command.verb
    if verb in (Verb.JOIN, Verb.LEAVE):
        kind = ConfirmationKind.JOIN if verb is Verb.JOIN else ConfirmationKind.LEAVE
        mode = SubscriptionMode(command.argument) if command.argument else default
        return _confirmation_outcome(await ask(session, deps, kind=kind, email=email, display_name=display_name,
                                               category=category, mode=mode, in_reply_to=in_reply_to, now=now))
    if verb is Verb.HELP:
        return "see the list of commands below"
    user = await queries.user_by_email(session, email)
    if user is None:
        return "not done: this address follows nothing here; send \"join\" first"
    if verb in (Verb.NOTIFY, Verb.MODE) and not trusted:
        # Anyone can write any From: without our MTA's word for it, only the address's owner may say yes.
        assert command.argument is not None
        kind = ConfirmationKind.NOTIFY if verb is Verb.NOTIFY else ConfirmationKind.MODE
        choice = NotifyReplies(command.argument) if verb is Verb.NOTIFY else SubscriptionMode(command.argument)
        return _confirmation_outcome(await ask(session, deps, kind=kind, email=email, display_name=display_name,
                                               category=category, mode=choice, in_reply_to=in_reply_to, now=now))
    if verb is Verb.NOTIFY:
        assert command.argument is not None
        user.notify_replies = NotifyReplies(command.argument).value
        return f"done: replies by mail are now \"{command.argument}\""
    if verb is Verb.MODE:
        assert command.argument is not None
        mode = SubscriptionMode(command.argument)
        await change_mode(session, user=user, category=category, mode=mode, now=now)
        if category is None:
            return "done: announcements " + ("muted" if mode is SubscriptionMode.MUTE else "on")
        return f"done: {category.name} is now \"{mode.value}\""
    subscriptions = await queries.subscriptions_of(session, user.id)
    follows = ", ".join(f"{slug} ({sub.mode})" for sub, slug in subscriptions) or "no category"
    announcements = "muted" if user.announcements_muted else "on"
    return f"you follow {follows}; announcements {announcements}; replies by mail \"{user.notify_replies}\""


def _confirmation_outcome(asked: Asked) -> str:
    if asked.sent:
        return "a confirmation was sent to you in a separate email: reply to it to finish"
    return "no new confirmation: one sent earlier is still waiting for your reply"


async def answer_commands(
    session: AsyncSession, deps: Deps, *, category: Category, parsed: ParsedMail, results: list[CommandResult],
    now: datetime,
) -> bool:
    """One answer mail listing each command and what it did, to the sender (at most MAX_ANSWERS_PER_HOUR)."""
    settings = deps.settings
    email = queries.normalize_email(parsed.from_address)
    recent = await session.scalar(
        select(func.count(Outbox.id)).where(Outbox.kind == OutboxKind.NOTICE.value, Outbox.recipient == email,
                                            Outbox.created_at > now - timedelta(hours=1))
    )
    if int(recent or 0) >= MAX_ANSWERS_PER_HOUR:
        log.info("membership.answer_rate_limited to=%s", email)
        return False
    slug = category.slug
    rendered = deps.renderer.render(MailTemplate.COMMAND_ANSWER, {
        "site": _site(deps),
        "category": {"name": category.name, "slug": slug},
        "results": [{"line": r.line, "outcome": r.outcome} for r in results],
        "request_address": membership_address(settings, slug, "request"),
        "join_address": membership_address(settings, slug, "join"),
        "leave_address": membership_address(settings, slug, "leave"),
    })
    key = f"answer:{parsed.sha256}:{email}"
    message_id = make_message_id("answer", hashlib.sha256(key.encode()).hexdigest()[:24], domain=settings.site.domain,
                                 salt=settings.site.message_id_salt)
    user = await queries.user_by_email(session, email)
    raw = site_notice(settings, to=email, rendered=rendered, message_id=message_id,
                      in_reply_to=None if parsed.message_id_synthesized else parsed.message_id, now=now)
    await enqueue(session, [OutgoingMessage(
        kind=OutboxKind.NOTICE, dedupe_key=key[:255], message_id=message_id,
        envelope_from="" if user is None else user_bounce_address(settings, user.id, now=now), recipient=email,
        raw=raw, user_id=None if user is None else user.id,
    )], now=now)
    return True



# ----------------------------------------------------------------------------------------------------------------
# What the mail routes call


async def ask_by_mail(
    session: AsyncSession, deps: Deps, *, slug: str, kind: ConfirmationKind, parsed: ParsedMail, now: datetime
) -> Asked | Refusal:
    """A mail to <slug>-join@ or <slug>-leave@: a confirmation to its From address (a join in the mode its
    Subject or first line names, else the category's default mode, else [subscriptions] default_mode)."""
    if not parsed.from_address:
        return Refusal(NO_FROM, NO_FROM.text)
    category = await queries.category_by_slug(session, slug)
    if category is None:
        return Refusal(UNKNOWN_RECIPIENT, f"no category {slug}")
    named = join_mode(parsed.subject, parsed.text or "") if kind is ConfirmationKind.JOIN else None
    mode = SubscriptionMode(named) if named else categories.join_default_mode(
        category, deps.settings.subscriptions.default_mode)
    return await ask(session, deps, kind=kind, email=parsed.from_address, display_name=parsed.from_name,
                     category=announcements_target(category), mode=mode,
                     in_reply_to=None if parsed.message_id_synthesized else parsed.message_id, now=now)


async def commands_by_mail(
    session: AsyncSession, deps: Deps, *, slug: str, parsed: ParsedMail, raw: bytes, now: datetime
) -> list[CommandResult] | Refusal:
    """A mail to <slug>-request@ (``raw``: its bytes, for our MTA's Authentication-Results): run its commands and
    answer with what each did."""
    if not parsed.from_address:
        return Refusal(NO_FROM, NO_FROM.text)
    category = await queries.category_by_slug(session, slug)
    if category is None:
        return Refusal(UNKNOWN_RECIPIENT, f"no category {slug}")
    commands = parse_commands(parsed.subject, parsed.text or "")
    results = await run_commands(session, deps, category=category, parsed=parsed, commands=commands, now=now,
                                 trusted=sender_authenticated(raw, parsed, deps.settings))
    await answer_commands(session, deps, category=category, parsed=parsed, results=results, now=now)
    return results


async def ask_by_web(
    session: AsyncSession, deps: Deps, *, slug: str, email: str, mode: SubscriptionMode, now: datetime
) -> Asked | None:
    """A page's "Follow by email" form: a confirmation of joining ``slug`` to ``email``, under the same limits as
    by mail. None when there is no such category on the web (none at all, or a private one: it has no page to
    carry the form, and answering would tell the web it exists; its people join by mail). Whatever the
    address (a member, a stranger, one at its limit), the caller must answer the same way: the result is for the
    logs only."""
    category = await queries.category_by_slug(session, slug)
    if category is None or category.private:
        return None
    return await ask(session, deps, kind=ConfirmationKind.JOIN, email=email, display_name="",
                     category=announcements_target(category), mode=mode, in_reply_to=None, now=now)
