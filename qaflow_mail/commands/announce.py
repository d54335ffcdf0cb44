"""`announce send` publishes an announcement to every user at once; `announce status ID` follows its broadcast.

    qaflow-mail announce send --from EMAIL --subject S --body-file F [--json]  (an admin; - reads stdin)
    qaflow-mail announce status ID [--json]
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.commands.common import CommandError, Subparsers, iso, print_json, read_input, run_in_session
from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Announcement, FanoutKind
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.announcements import announcement_status
from qaflow_mail.services import fanout_jobs
from qaflow_mail.services.announcements import publish_text
from qaflow_mail.services.users import UnknownUser, find_user


async def send_announcement(
    session: AsyncSession, deps: Deps, *, sender: str, subject: str, body: str, now: datetime
) -> dict[str, Any]:
    """Publish an announcement from the command line (trusted: no DKIM, no confirmation), in the caller's
    transaction; what `announce send --json` prints."""
    try:
        author = await find_user(session, sender)
        published = await publish_text(session, deps, author=author, subject=subject, text=body, now=now)
    except (UnknownUser, PermissionError):
        raise CommandError(f"{sender} is not an active admin: only admins may announce") from None
    except ValueError as exc:  # publish_text's word for an empty text
        raise CommandError(str(exc)) from None
    return {"id": published.announcement.id, "post_id": published.post.id, "topic_id": published.post.topic_id,
            "recipients": published.recipients}


def cmd_announce_send(settings: Settings, args: argparse.Namespace) -> int:
    body = read_input(args.body_file)
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
              f"{result['recipients']} message(s) to be queued by the running gateway")
    return 0


async def status_of(session: AsyncSession, announcement_id: int) -> dict[str, Any]:
    """What `announce status --json` prints: the announcement and how far its broadcast got."""
    announcement = await session.get(Announcement, announcement_id)
    if announcement is None:
        raise CommandError(f"no announcement {announcement_id}")
    counts = await announcement_status(session, announcement_id)
    job = await fanout_jobs.progress(session, kind=FanoutKind.ANNOUNCEMENT, target_id=announcement_id)
    # The broadcast's fan-out job writes the outbox rows in batches: until it finishes, some are still to come.
    fanout = None if job is None else {"written": job.handed, "finished": job.finished_at is not None,
                                       "error": job.last_error or None}
    return {
        "id": announcement.id, "subject": announcement.subject, "status": announcement.status,
        "verified_by": announcement.verified_by or None, "post_id": announcement.post_id,
        "inbound_id": announcement.inbound_id, "created_at": iso(announcement.created_at),
        "confirmed_at": iso(announcement.confirmed_at), **counts, "fanout": fanout,
    }


def cmd_announce_status(settings: Settings, args: argparse.Namespace) -> int:
    data = run_in_session(settings, lambda session: status_of(session, args.id))
    if args.json:
        print_json(data)
    else:
        print(f"announcement {data['id']} \"{data['subject']}\": {data['status']}"
              f"{' (' + data['verified_by'] + ')' if data['verified_by'] else ''}")
        print(f"  queued {data['queued']}, sent {data['sent']}, failed {data['failed']}")
        fanout = data["fanout"]
        if fanout is not None and not fanout["finished"]:
            print(f"  still writing the broadcast: {fanout['written']} message(s) written so far")
    return 0


def register(subparsers: Subparsers) -> None:
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
