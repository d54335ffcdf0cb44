"""Message bodies shared by many outbox rows, stored once: each row keeps only its recipient's values.

A daily digest pass to 100,000 subscribers wrote 8.6 GB of outbox rows (86 KB each, written twice by SQLite's WAL),
although a few hundred digests differ only in their recipient's address, name and signed tokens. A shared digest
(`outbound.digest_build.SharedDigest`) is stored once as its `MessagePrototype`, and each of its rows holds the
values to fill in (a few hundred bytes of JSON), filled in as the row is sent.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Collection, Mapping
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import OutboxBody
from qaflow_mail.outbound.fanout import MessagePrototype

# Bodies read back and kept by a sending process: a pass's distinct digests are sent in the order they were queued.
KEPT_PROTOTYPES = 64


class StoredBody:
    """One shared body as its outbox rows are queued: `id` is set once it is written (in the transaction that
    writes the first of them; a failed transaction ends the digest pass that made it, so no row ever names an id
    that was rolled back)."""

    __slots__ = ("data", "id", "prototype")

    def __init__(self, prototype: MessagePrototype) -> None:
        self.prototype = prototype
        self.data = prototype.stored()
        self.id: int | None = None

    def fill(self, values: bytes) -> bytes:
        """The whole message for a row holding `values` (what sending it will make of it)."""
        return fill_stored(self.prototype, values)


async def store(session: AsyncSession, bodies: Collection[StoredBody], *, now: datetime) -> None:
    """Write the bodies not written yet, and give them their ids."""
    for body in bodies:
        if body.id is None:
            body.id = await session.scalar(
                insert(OutboxBody).values(data=body.data, created_at=now).returning(OutboxBody.id))


def values_json(values: Mapping[str, str]) -> bytes:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class PrototypeCache:
    """The prototypes of the bodies rows being sent name, read once each (they never change)."""

    def __init__(self, size: int = KEPT_PROTOTYPES) -> None:
        self.size = size
        self._kept: OrderedDict[int, MessagePrototype | ValueError] = OrderedDict()

    async def load(self, session: AsyncSession, ids: Collection[int]) -> None:
        """Read the bodies among `ids` not kept yet (one query)."""
        missing = {body_id for body_id in ids if body_id not in self._kept}
        if not missing:
            for body_id in ids:
                self._kept.move_to_end(body_id)
            return
        rows = (await session.execute(select(OutboxBody.id, OutboxBody.data).where(OutboxBody.id.in_(missing)))).all()
        found = {body_id: data for body_id, data in rows}
        for body_id in missing:
            data = found.get(body_id)
            try:
                self._kept[body_id] = (MessagePrototype.from_stored(data) if data is not None
                                       else ValueError(f"outbox body {body_id} is gone"))
            except ValueError as error:
                self._kept[body_id] = error
        while len(self._kept) > max(self.size, len(ids)):
            self._kept.popitem(last=False)

    def message(self, body_id: int, values: bytes) -> bytes:
        """The message of a row naming `body_id` with its `values`; ValueError when it cannot be made."""
        prototype = self._kept.get(body_id)
        if prototype is None:
            raise ValueError(f"outbox body {body_id} was not loaded")
        if isinstance(prototype, ValueError):
            raise prototype
        return fill_stored(prototype, values)


def fill_stored(prototype: MessagePrototype, values: bytes) -> bytes:
    """`prototype` filled in with a row's `values` (values_json); ValueError when they cannot be."""
    try:
        filled = json.loads(values)
    except json.JSONDecodeError as error:
        raise ValueError(f"unreadable values: {error}") from error
    if not isinstance(filled, dict):
        raise ValueError("unreadable values: not an object")
    try:
        return prototype.fill_values(filled)
    except KeyError as error:
        raise ValueError(f"no value for {error}") from error


async def whole_message(session: AsyncSession, body_id: int | None, raw: bytes) -> bytes:
    """The message an outbox row sends: its `raw`, or with a `body_id` that body filled in with `raw`'s values."""
    if body_id is None:
        return raw
    cache = PrototypeCache(size=1)
    await cache.load(session, {body_id})
    return cache.message(body_id, raw)
