"""The full-text index of published posts, per backend, kept current by the database itself.

SQLite: an FTS5 table ``post_search`` (rowid = post id) filled by triggers on ``posts``, so every writer (the
pipeline, the importer, a moderator publishing a held post) updates it in its own transaction. PostgreSQL: a GIN
index over the post's ``tsvector`` expression, limited to published posts; the planner uses it whenever a query
repeats ``SEARCH_DOCUMENT_PG``. Both are created by migration 0004 and are not described by the models, so schema
comparisons leave them out with ``include_name``. Migration 0009 rebuilds the FTS5 table with prefix indexes of 2
and 3 characters (``SQLITE_CREATE_WITH_PREFIXES``), so that ``pars*`` reads one list rather than merging the lists
of every word it starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FTS_TABLE = "post_search"
PG_INDEX = "ix_posts_search"
TS_CONFIG = "english"
# The expression the GIN index is built on; a query must repeat it word for word to use the index.
SEARCH_DOCUMENT_PG = f"to_tsvector('{TS_CONFIG}', coalesce(posts.subject, '') || ' ' || coalesce(posts.body_text, ''))"

SQLITE_CREATE = (
    f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(subject, body, tokenize='porter unicode61 remove_diacritics 2')",
    f"""CREATE TRIGGER {FTS_TABLE}_insert AFTER INSERT ON posts WHEN new.status = 'published' BEGIN
        INSERT INTO {FTS_TABLE}(rowid, subject, body) VALUES (new.id, new.subject, new.body_text);
    END""",
    f"""CREATE TRIGGER {FTS_TABLE}_update AFTER UPDATE OF subject, body_text, status ON posts BEGIN
        DELETE FROM {FTS_TABLE} WHERE rowid = old.id;
        INSERT INTO {FTS_TABLE}(rowid, subject, body)
            SELECT new.id, new.subject, new.body_text WHERE new.status = 'published';
    END""",
    f"""CREATE TRIGGER {FTS_TABLE}_delete AFTER DELETE ON posts BEGIN
        DELETE FROM {FTS_TABLE} WHERE rowid = old.id;
    END""",
    f"INSERT INTO {FTS_TABLE}(rowid, subject, body) SELECT id, subject, body_text FROM posts "
    "WHERE status = 'published'",
)
# The table as it is since migration 0009 (the triggers and the filling are those of 0004).
SQLITE_CREATE_WITH_PREFIXES = (
    f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(subject, body, tokenize='porter unicode61 remove_diacritics 2', "
    "prefix='2 3')",
    *SQLITE_CREATE[1:],
)
SQLITE_DROP = (
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_delete",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_update",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_insert",
    f"DROP TABLE IF EXISTS {FTS_TABLE}",
)
POSTGRES_CREATE = (
    f"CREATE INDEX {PG_INDEX} ON posts USING gin (({SEARCH_DOCUMENT_PG})) WHERE status = 'published'",
)
POSTGRES_DROP = (f"DROP INDEX IF EXISTS {PG_INDEX}",)

_FTS_SHADOW_SUFFIXES = ("", "_data", "_idx", "_content", "_docsize", "_config")
SEARCH_TABLES = frozenset(FTS_TABLE + suffix for suffix in _FTS_SHADOW_SUFFIXES)


def include_name(name: str | None, type_: str, parent_names: Mapping[Any, str | None]) -> bool:
    """For Alembic's schema comparison: everything but the search index, which the models do not describe."""
    if type_ == "table":
        return name not in SEARCH_TABLES
    if type_ == "index":
        return name != PG_INDEX
    return True
