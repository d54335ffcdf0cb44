"""Full-text search of published posts in public categories: SQLite FTS5 or PostgreSQL tsvector (db/search_index).

Whatever a person types is turned into a query of plain words, "quoted phrases" and prefixes (``pars*``) before it
reaches the database, so no input is a syntax error. Extracts come back with the matched words between two
private-use marker characters, which ``highlighted`` turns into ``<mark>`` after escaping everything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from markupsafe import Markup, escape
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Category, Post, PostStatus, Topic, User
from qaflow_mail.db.search_index import FTS_TABLE, SEARCH_DOCUMENT_PG, TS_CONFIG
from qaflow_mail.services.topics import public_name, redact_addresses

MAX_TERMS = 12
MAX_WORD_CHARS = 64
MAX_QUERY_CHARS = 500
MARK_START, MARK_END = "\ue000", "\ue001"
PUBLISHED = PostStatus.PUBLISHED.value

_TERM_RE = re.compile(r'"([^"]*)"?|(\S+)')
_WORD_RE = re.compile(r"\w+")
_MARKED_RE = re.compile(f"{MARK_START}(.*?){MARK_END}", re.DOTALL)


class SearchOrder(StrEnum):
    BEST = "best"
    NEWEST = "newest"


@dataclass(frozen=True, slots=True)
class Term:
    words: tuple[str, ...]
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class SearchHit:
    post_id: int
    topic_id: int
    topic_subject: str
    author: str
    created_at: datetime
    extract: Markup


@dataclass(frozen=True, slots=True)
class SearchResults:
    query: str
    hits: list[SearchHit]
    page: int
    has_next: bool


# ----------------------------------------------------------------------------------------------------------------
# Pure: what was typed → terms → the backend's query language


def parse_query(typed: str) -> list[Term]:
    """Words, "phrases" and prefix* terms in what a person typed; everything else is ignored."""
    terms: list[Term] = []
    for match in _TERM_RE.finditer(typed[:MAX_QUERY_CHARS]):
        phrase, bare = match.group(1), match.group(2)
        source = phrase if phrase is not None else bare
        words = tuple(word[:MAX_WORD_CHARS].lower() for word in _WORD_RE.findall(source))
        if not words:
            continue
        prefix = phrase is None and bare.endswith("*")
        terms.append(Term(words=words, prefix=prefix))
        if len(terms) == MAX_TERMS:
            break
    return terms


def fts5_query(terms: list[Term]) -> str:
    """FTS5 MATCH text: each term a quoted string (words only, so no quote can appear inside), all required."""
    return " AND ".join(f'"{" ".join(term.words)}"' + ("*" if term.prefix else "") for term in terms)


def tsquery(terms: list[Term]) -> str:
    """PostgreSQL to_tsquery text: phrases with <->, prefixes with :*, all required."""
    parts = []
    for term in terms:
        lexemes = [f"'{word}'" for word in term.words]
        if term.prefix:
            lexemes[-1] += ":*"
        parts.append("(" + " <-> ".join(lexemes) + ")" if len(lexemes) > 1 else lexemes[0])
    return " & ".join(parts)


def highlighted(extract: str) -> Markup:
    """The extract escaped, addresses masked, the matched words in <mark>."""
    safe = redact_addresses(extract)
    out: list[Markup] = []
    position = 0
    for match in _MARKED_RE.finditer(safe):
        out.append(escape(_unmarked(safe[position : match.start()])))
        out.append(Markup("<mark>{}</mark>").format(_unmarked(match.group(1))))
        position = match.end()
    out.append(escape(_unmarked(safe[position:])))
    return Markup("").join(out)


def _unmarked(value: str) -> str:
    return value.replace(MARK_START, "").replace(MARK_END, "")


# ----------------------------------------------------------------------------------------------------------------
# Queries
#
# The work is bounded: the index ranks (or lists newest first) a window of matching post ids just large enough for
# the page asked for, and only those ids are joined to their topics, categories and authors. A window that loses
# too many posts to private categories is widened and ranked again. "Best match" ranks among the newest
# ``*_RANKED_AT_MOST`` matches, so a word in nearly every post costs the same as a rare one; "newest" walks the
# index backwards by post id (ids grow as posts arrive).

SQLITE_RANKED_AT_MOST = 4_000
# bm25() first counts, over the WHOLE index, the posts each term matches (its IDF). For a word that is a doclist
# length; for a phrase it means checking word positions in every post holding all its words, about 1 ms per 1,000
# matches, whatever the window. So a query with a phrase is ranked by bm25 only while the index holds fewer than
# this many matches for it; beyond, "best" is the cheaper rank: posts whose subject matches every term first, then
# the others, newest first in each.
SQLITE_PHRASE_BM25_AT_MOST = 1_000
POSTGRES_RANKED_AT_MOST = 2_000
_FIRST_WINDOW = 50
_WIDEN = 4

# The lowest post id among the newest SQLITE_RANKED_AT_MOST matches (no row: fewer matches, rank them all).
_SQLITE_FLOOR = f"""
SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :query ORDER BY rowid DESC LIMIT 1 OFFSET :skip
"""
_SQLITE_WINDOW = {
    SearchOrder.BEST: f"""
SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :query AND rowid >= :floor
ORDER BY bm25({FTS_TABLE}, 4.0, 1.0), rowid DESC LIMIT :window
""",
    SearchOrder.NEWEST: f"""
SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :query ORDER BY rowid DESC LIMIT :window
""",
}
_SQLITE_NEWEST = _SQLITE_WINDOW[SearchOrder.NEWEST]
# Extracts only for the page shown: snippet() runs per row.
_SQLITE_EXTRACTS = f"""
SELECT rowid, snippet({FTS_TABLE}, 1, :mark_start, :mark_end, '…', 24)
FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :query AND rowid IN ({{ids}})
"""

# The GIN index finds the matches; ts_rank_cd runs only over the newest POSTGRES_RANKED_AT_MOST of them.
_POSTGRES_MATCHES = f"""
SELECT posts.id, {SEARCH_DOCUMENT_PG} AS document FROM posts
WHERE {SEARCH_DOCUMENT_PG} @@ to_tsquery('{TS_CONFIG}', :query) AND posts.status = 'published'
ORDER BY posts.id DESC
"""
_POSTGRES_WINDOW = {
    SearchOrder.BEST: f"""
SELECT id FROM ({_POSTGRES_MATCHES} LIMIT :ranked) AS recent
ORDER BY ts_rank_cd(document, to_tsquery('{TS_CONFIG}', :query)) DESC, id DESC LIMIT :window
""",
    SearchOrder.NEWEST: f"""
SELECT posts.id FROM posts
WHERE {SEARCH_DOCUMENT_PG} @@ to_tsquery('{TS_CONFIG}', :query) AND posts.status = 'published'
ORDER BY posts.id DESC LIMIT :window
""",
}
# ts_headline is costly: only for the page shown.
_POSTGRES_EXTRACTS = f"""
SELECT posts.id, ts_headline('{TS_CONFIG}', posts.body_text, to_tsquery('{TS_CONFIG}', :query), :headline_options)
FROM posts WHERE posts.id IN ({{ids}})
"""
_HEADLINE_OPTIONS = (f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=30, MinWords=12, MaxFragments=2, "
                     'FragmentDelimiter=" … "')

_Row = tuple[int, int, str, datetime, str, str]


async def _ranked_ids(session: AsyncSession, sqlite: bool, order: SearchOrder, params: dict[str, object],
                      window: int) -> list[int]:
    if "subject_query" in params:
        return await _subject_first_ids(session, params, window)
    sql = _SQLITE_WINDOW[order] if sqlite else _POSTGRES_WINDOW[order]
    return [int(pid) for pid in (await session.scalars(text(sql), params | {"window": window})).all()]


async def _subject_first_ids(session: AsyncSession, params: dict[str, object], window: int) -> list[int]:
    """The first ``window`` ids in the order: subject matches newest first, then the other matches newest first.
    Two walks of the index backwards by id, each stopping after the rows it needs."""
    in_subject = [int(pid) for pid in await session.scalars(
        text(_SQLITE_NEWEST), {"query": params["subject_query"], "window": window})]
    if len(in_subject) == window:
        return in_subject
    taken = set(in_subject)
    newest = await session.scalars(text(_SQLITE_NEWEST), {"query": params["query"],
                                                          "window": window + len(in_subject)})
    rest = [int(pid) for pid in newest if int(pid) not in taken]
    return (in_subject + rest)[:window]


async def _sqlite_best_params(session: AsyncSession, terms: list[Term]) -> dict[str, object]:
    """The parameters of a "best match" search on SQLite: bm25 over the newest matches, or, for a common phrase,
    the subject-first rank (see SQLITE_PHRASE_BM25_AT_MOST)."""
    params: dict[str, object] = {"query": fts5_query(terms)}
    if any(len(term.words) > 1 for term in terms):
        common = await session.scalar(text(_SQLITE_FLOOR), params | {"skip": SQLITE_PHRASE_BM25_AT_MOST - 1})
        if common is not None:
            return params | {"subject_query": f"{{subject}} : ({params['query']})"}
    floor = await session.scalar(text(_SQLITE_FLOOR), params | {"skip": SQLITE_RANKED_AT_MOST - 1})
    return params | {"floor": int(floor or 0)}


async def _visible(session: AsyncSession, post_ids: list[int]) -> dict[int, _Row]:
    """Of ``post_ids``, the published posts in public categories, with what a result shows."""
    if not post_ids:
        return {}
    rows = await session.execute(
        select(Post.id, Post.topic_id, Topic.subject, Post.created_at, User.display_name, User.email)
        .join(Topic, Topic.id == Post.topic_id)
        .join(Category, Category.id == Topic.category_id)
        .join(User, User.id == Post.author_id)
        .where(Post.id.in_(post_ids), Post.status == PUBLISHED, Category.private.is_(False))
    )
    return {row[0]: (row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows}


async def search_posts(
    session: AsyncSession, typed: str, *, order: SearchOrder = SearchOrder.BEST, page: int = 1, per_page: int = 20
) -> SearchResults:
    """One page of published posts in public categories that match ``typed`` (every term must match)."""
    page = max(page, 1)
    terms = parse_query(typed)
    if not terms:
        return SearchResults(query=typed, hits=[], page=page, has_next=False)
    sqlite = session.get_bind().dialect.name == "sqlite"
    params: dict[str, object]
    if sqlite:
        params = await _sqlite_best_params(session, terms) if order is SearchOrder.BEST else {
            "query": fts5_query(terms)}
    else:
        params = {"query": tsquery(terms), "ranked": POSTGRES_RANKED_AT_MOST}
    wanted = (page - 1) * per_page + per_page + 1  # one more than the page: is there a next one?
    window = max(2 * wanted, _FIRST_WINDOW)
    while True:
        ids = await _ranked_ids(session, sqlite, order, params, window)
        visible = await _visible(session, ids)
        if len(visible) >= wanted or len(ids) < window:
            break
        window *= _WIDEN  # private categories took too many: rank a wider window
    ordered = [visible[pid] for pid in ids if pid in visible][(page - 1) * per_page : wanted]
    shown = ordered[:per_page]
    extracts: dict[int, str] = {}
    if shown:
        ids_sql = ", ".join(str(row[0]) for row in shown)  # integers from our own query
        if sqlite:
            extracts_sql = _SQLITE_EXTRACTS.format(ids=ids_sql)
            extract_params = params | {"mark_start": MARK_START, "mark_end": MARK_END}
        else:
            extracts_sql = _POSTGRES_EXTRACTS.format(ids=ids_sql)
            extract_params = params | {"headline_options": _HEADLINE_OPTIONS}
        extracts = {int(pid): extract or "" for pid, extract in
                    await session.execute(text(extracts_sql), extract_params)}
    hits = [
        SearchHit(post_id=post_id, topic_id=topic_id, topic_subject=subject, author=public_name(name, email),
                  created_at=created, extract=highlighted(extracts.get(post_id, "")))
        for post_id, topic_id, subject, created, name, email in shown
    ]
    return SearchResults(query=typed, hits=hits, page=page, has_next=len(ordered) > per_page)
