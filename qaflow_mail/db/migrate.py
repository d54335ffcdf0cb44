"""Schema upgrades through Alembic, a module of its own: Alembic brings Mako and Pygments (11 MB resident), which
a process that only reads and writes the database (a queue worker) need not load."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from qaflow_mail.db.engine import prepare_sqlite_path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Create or migrate the schema (blocking: call from a thread when a loop is running)."""
    prepare_sqlite_path(url)
    command.upgrade(alembic_config(url), revision)
