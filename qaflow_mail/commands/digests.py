"""`digest run`, `announce send|status`, and the function behind `user set --timezone`.

    qaflow-mail digest run [--period daily|weekly] [--now ISO-TIME] [--json]   (both periods when none is given)
    qaflow-mail announce send --from EMAIL --subject S --body-file F [--json]  (an admin; published at once)
    qaflow-mail announce status ID [--json]
    qaflow-mail user set EMAIL --timezone Europe/Berlin   -> cmd_user_set(settings, args) (args.email,
                                                            args.timezone; "" or "default" clears it)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, iso, print_json, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Announcement, UserStatus
from qaflow_mail.mail.addresses import Announce
from qaflow_mail.mail.content import extract_content
from qaflow_mail.mail.parse import parse_message
from qaflow_mail.outbound.announcements import VerifiedBy, announcement_status
from qaflow_mail.outbound.digests import DigestStats, Period, parse_timezone, run_digests
from qaflow_mail.outbound.render import Renderer
from qaflow_mail.pipeline import Context
from qaflow_mail.pipeline.deps import Deps
from qaflow_mail.pipeline.steps.authorize_announcer import announcements_category
from qaflow_mail.pipeline.steps.store_announcement import publish

CLEAR_TIMEZONE = ("", "default")


def parse_now(value: str | None) -> datetime:
    """--now: an ISO 8601 time; without an offset it is taken as UTC."""
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--now must be an ISO time such as 2025-06-02T07:00:00+02:00, got {value!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def cmd_digest_run(settings: Settings, args: argparse.Namespace) -> int:
    now = parse_now(args.now)
    periods = [Period(args.period)] if args.period else [Period.DAILY, Period.WEEKLY]
    renderer = Renderer()

    async def work() -> list[DigestStats]:
        engine = create_engine(settings.database.url)
        try:
            sessions = session_factory(engine)
            return [await run_digests(sessions, settings=settings, renderer=renderer, now=now, period=period)
                    for period in periods]
        finally:
            await engine.dispose()

    results = asyncio.run(work())
    if args.json:
        print_json({"now": iso(now), "runs": [r.as_dict() for r in results]})
    else:
        for r in results:
            print(f"{r.period}: {r.digests} digest(s) queued, {r.nothing_new} user(s) with nothing new, "
                  f"{r.users_due} due at {iso(now)}")
    return 0


def _read_body(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data.decode("utf-8-sig", errors="replace")


def announcement_mail(settings: Settings, *, sender: str, subject: str, body: str, now: datetime) -> bytes:
    """The announcement as a message, as if the admin had mailed it, so it is stored as mail posts are."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"{settings.announce.address}@{settings.site.domain}"
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid("announce", domain=settings.site.domain)
    message.set_content(body)
    return message.as_bytes()


async def send_announcement(
    session: AsyncSession, deps: Deps, *, sender: str, subject: str, body: str, now: datetime
) -> dict[str, Any]:
    """Publish an announcement from the command line (trusted: no DKIM, no confirmation). One transaction."""
    user = await queries.user_by_email(session, sender)
    if user is None or not user.is_admin or user.status != UserStatus.ACTIVE:
        raise CommandError(f"{sender} is not an active admin: only admins may announce")
    raw = announcement_mail(deps.settings, sender=user.email, subject=subject, body=body, now=now)
    parsed = parse_message(raw)
    content = extract_content(parsed)
    if content.is_empty:
        raise CommandError("the announcement has no text")
    ctx = Context(deps=deps, session=session, raw=raw, parsed=parsed, envelope_from=user.email,
                  recipient=f"{deps.settings.announce.address}@{deps.settings.site.domain}", destination=Announce(),
                  source="cli", now=now, author=user, content=content)
    ctx = dataclasses.replace(ctx, category=await announcements_category(ctx))
    published = await publish(ctx, verified_by=VerifiedBy.COMMAND_LINE)
    return {"id": published.announcement.id, "post_id": published.post.id, "topic_id": published.post.topic_id,
            "recipients": published.recipients}


def cmd_announce_send(settings: Settings, args: argparse.Namespace) -> int:
    body = _read_body(args.body_file)
    subject = " ".join(args.subject.split())
    if not subject:
        raise CommandError("--subject must not be empty")
    now = datetime.now(UTC)

    async def work() -> dict[str, Any]:
        engine = create_engine(settings.database.url)
        try:
            sessions = session_factory(engine)
            deps = Deps.build(settings, sessions)
            async with sessions() as session, session.begin():
                return await send_announcement(session, deps, sender=args.sender, subject=subject, body=body,
                                               now=now)
        finally:
            await engine.dispose()

    result = asyncio.run(work())
    if args.json:
        print_json(result)
    else:
        print(f"announcement {result['id']} published (topic #{result['topic_id']}), "
              f"{result['recipients']} message(s) queued")
    return 0


async def status_of(session: AsyncSession, announcement_id: int) -> dict[str, Any]:
    announcement = await session.scalar(select(Announcement).where(Announcement.id == announcement_id))
    if announcement is None:
        raise CommandError(f"no announcement {announcement_id}")
    counts = await announcement_status(session, announcement_id)
    return {
        "id": announcement.id, "subject": announcement.subject, "status": announcement.status,
        "verified_by": announcement.verified_by or None, "post_id": announcement.post_id,
        "inbound_id": announcement.inbound_id, "created_at": iso(announcement.created_at),
        "confirmed_at": iso(announcement.confirmed_at), **counts,
    }


def cmd_announce_status(settings: Settings, args: argparse.Namespace) -> int:
    data = run_in_session(settings, lambda session: status_of(session, args.id))
    if args.json:
        print_json(data)
    else:
        print(f"announcement {data['id']} \"{data['subject']}\": {data['status']}"
              f"{' (' + data['verified_by'] + ')' if data['verified_by'] else ''}")
        print(f"  queued {data['queued']}, sent {data['sent']}, failed {data['failed']}")
    return 0


def cmd_user_set(settings: Settings, args: argparse.Namespace) -> int:
    """`user set EMAIL --timezone ZONE`: the zone digests are timed in for this user."""
    if args.timezone is None:
        raise CommandError("nothing to set: give --timezone ZONE (an IANA name such as Europe/Berlin)")
    zone: str | None = args.timezone.strip()
    if zone is not None and zone.lower() in CLEAR_TIMEZONE:
        zone = None
    elif zone is not None:
        try:
            zone = parse_timezone(zone).key
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    async def work(session: AsyncSession) -> str:
        user = await queries.user_by_email(session, args.email)
        if user is None:
            raise CommandError(f"no user {args.email.strip().lower()!r}")
        user.timezone = zone
        return user.email

    email = run_in_session(settings, work)
    shown = zone or f"the site default ({settings.digest.timezone})"
    print(f"user {email}: digests timed in {shown}")
    return 0


def add_user_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `user set` (the `user` command group lives in cli.py)."""
    parser.add_argument("email")
    parser.add_argument("--timezone", help='IANA time zone for digests, e.g. Europe/Berlin; "default" clears it')
    parser.set_defaults(func=cmd_user_set)


def register(subparsers: Any) -> None:
    digest = subparsers.add_parser("digest", help="daily and weekly digests").add_subparsers(
        dest="digest_command", required=True)
    run = digest.add_parser("run", help="one digest pass now (or at --now): whatever is due is queued, once")
    run.add_argument("--period", choices=[p.value for p in Period], help="default: both")
    run.add_argument("--now", help="the time of the pass, ISO 8601 (default: now; no offset means UTC)")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=cmd_digest_run)

    announce = subparsers.add_parser("announce", help="announcements to every user").add_subparsers(
        dest="announce_command", required=True)
    send = announce.add_parser("send", help="publish an announcement now (from an admin)")
    send.add_argument("--from", dest="sender", required=True, metavar="EMAIL", help="an admin's address")
    send.add_argument("--subject", required=True)
    send.add_argument("--body-file", required=True, metavar="FILE", help="UTF-8 text; - reads stdin")
    send.add_argument("--json", action="store_true")
    send.set_defaults(func=cmd_announce_send)
    status = announce.add_parser("status", help="how many broadcast messages are queued, sent and failed")
    status.add_argument("id", type=int)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_announce_status)
