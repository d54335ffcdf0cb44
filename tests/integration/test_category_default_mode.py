"""A category's default join mode (`category set SLUG --default-mode …`): a join that names no mode gets it; a join
that names one gets that; without one the site's [subscriptions] default_mode applies."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

import pytest
from sqlalchemy import select

from qaflow_mail.cli import build_parser
from qaflow_mail.commands.common import CommandError
from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Category, CategorySubscription, SubscriptionMode
from qaflow_mail.outbound.sender import sending
from qaflow_mail.server.app import Running
from qaflow_mail.services.categories import update_category
from tests.fanout import fanout_done
from tests.sink import SmtpSink
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"


@pytest.fixture
def settings(settings: Settings, sink: SmtpSink) -> Settings:
    return dataclasses.replace(
        settings,
        outbound=dataclasses.replace(settings.outbound, **sink.as_relay()),
    )


async def _mail(run: Running, sender: str, to: str, subject: str, body: str = "") -> int | None:
    message = make_mail(sender=sender, to=to, subject=subject, body=body)
    return (await send(run.smtp_port, message, mail_from=sender, rcpt_tos=[to])).data_code


async def _join(run: Running, sink: SmtpSink, sender: str, subject: str) -> str | None:
    """Ask to join General by mail, confirm by replying, and return the mode the subscription got."""
    assert await _mail(run, sender, f"general-join@{DOMAIN}", subject) == 250
    before = len(sink.messages)
    await fanout_done(run.deps)
    async with sending(run.deps) as sender_task:
        await sender_task.flush()
    [confirmation] = (await sink.wait_for(before + 1))[before:]
    confirm_at = str(confirmation.parsed()["Reply-To"].addresses[0].addr_spec)
    assert await _mail(run, sender, confirm_at, "Re: confirm", "yes") == 250
    async with sending(run.deps) as sender_task:
        await sender_task.flush()  # the welcome
    await sink.wait_for(before + 2)
    async with run.deps.sessions() as session:
        user = await queries.user_by_email(session, sender)
        assert user is not None
        mode: str | None = await session.scalar(
            select(CategorySubscription.mode).where(CategorySubscription.user_id == user.id))
    return mode


async def test_a_join_naming_no_mode_gets_the_categorys_default_then_the_sites(gateway: Running,
                                                                             sink: SmtpSink) -> None:
    async with gateway.deps.sessions() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        await update_category(session, "general", default_mode="weekly")
    await gateway.deps.categories.reload()

    assert await _join(gateway, sink, "one@example.net", "join") == SubscriptionMode.WEEKLY
    assert await _join(gateway, sink, "two@example.net", "join daily") == SubscriptionMode.DAILY  # named wins

    async with gateway.deps.sessions() as session, session.begin():
        await update_category(session, "general", default_mode="")  # back to [subscriptions] default_mode
    assert gateway.deps.settings.subscriptions.default_mode == "each"
    assert await _join(gateway, sink, "three@example.net", "join") == SubscriptionMode.EACH


def _cli(settings: Settings, *argv: str) -> int:
    args: argparse.Namespace = build_parser().parse_args(list(argv))
    status: int = args.func(settings, args)
    return status


async def _default_mode(settings: Settings) -> str | None:
    engine = create_engine(settings.database.url)
    try:
        async with session_factory(engine)() as session:
            mode: str | None = await session.scalar(select(Category.default_mode).where(Category.slug == "general"))
            return mode
    finally:
        await engine.dispose()


async def _add_general(settings: Settings) -> None:
    engine = create_engine(settings.database.url)
    try:
        async with session_factory(engine)() as session, session.begin():
            await queries.add_category(session, slug="general", name="General", allow_strangers=False)
    finally:
        await engine.dispose()


def test_category_set_default_mode_command(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_add_general(settings))
    assert _cli(settings, "category", "set", "general", "--default-mode", "daily") == 0
    assert "a join that names no mode gets daily" in capsys.readouterr().out
    assert asyncio.run(_default_mode(settings)) == "daily"
    assert _cli(settings, "category", "list", "--json") == 0
    assert '"default_mode": "daily"' in capsys.readouterr().out
    assert _cli(settings, "category", "set", "general", "--site-default-mode") == 0
    assert "the site's default (each)" in capsys.readouterr().out
    assert asyncio.run(_default_mode(settings)) is None
    with pytest.raises(SystemExit):  # argparse refuses a mode a join cannot have
        _cli(settings, "category", "set", "general", "--default-mode", "mute")
    with pytest.raises(CommandError, match="--default-mode"):
        _cli(settings, "category", "set", "general")
