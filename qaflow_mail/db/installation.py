"""The installation's own values kept in the database (the Message-ID salt), read once at start-up into Settings.

The salt lives in the database rather than in [site] data_dir: every gateway node sharing one database must mint
the same Message-ID for the same post, and a recreated database must get a new salt even where data_dir (with
its token secret) survives. The migration that creates the table writes the row; a row removed by hand is
written again here.
"""

from __future__ import annotations

import dataclasses
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine_for, session_factory
from qaflow_mail.db.models import Installation

ROW_ID = 1
SALT_BYTES = 8


async def message_id_salt(sessions: async_sessionmaker[AsyncSession]) -> str:
    """This database's salt; a new random one when its row is missing (two nodes racing agree on the first)."""
    async with sessions() as session:
        salt = await session.scalar(select(Installation.message_id_salt).where(Installation.id == ROW_ID))
    if salt is not None:
        return salt
    try:
        async with sessions() as session, session.begin():
            session.add(Installation(id=ROW_ID, message_id_salt=secrets.token_hex(SALT_BYTES)))
    except IntegrityError:
        pass  # another node wrote it first: use theirs
    async with sessions() as session:
        stored = await session.scalar(select(Installation.message_id_salt).where(Installation.id == ROW_ID))
    assert stored is not None
    return stored


def with_salt(settings: Settings, salt: str) -> Settings:
    return dataclasses.replace(settings, site=dataclasses.replace(settings.site, message_id_salt=salt))


async def with_installation(settings: Settings, sessions: async_sessionmaker[AsyncSession] | None = None) -> Settings:
    """``settings`` with this database's Message-ID salt (on a short-lived engine unless ``sessions`` is given)."""
    if sessions is not None:
        return with_salt(settings, await message_id_salt(sessions))
    engine = create_engine_for(settings.database)
    try:
        return with_salt(settings, await message_id_salt(session_factory(engine)))
    finally:
        await engine.dispose()
