"""Web speed: a forum of 100,000 posts in 10,000 topics on SQLite, served by the gateway's own aiohttp app,
read by 4 concurrent clients (a separate process, keep-alive connections).

Prints requests/s and p50/p95 latency for: a topic page of 20 posts, a bare aiohttp handler returning a fixed page
of the same size (measured in the same run: the ceiling on this machine), `/`, and `/search`. Targets: topic page
≥ 25 % of the bare handler's requests/s, `/` p95 ≤ 30 ms, `/search` p95 ≤ 100 ms.

    .venv/bin/python bench/web.py [--posts 100000] [--topics 10000] [--seconds 10] [--keep DIR] [--only TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qaflow_mail.config import DatabaseSettings, HttpSettings, Settings, SiteSettings  # noqa: E402
from qaflow_mail.db.engine import create_engine, session_factory  # noqa: E402
from qaflow_mail.db.migrate import upgrade  # noqa: E402
from qaflow_mail.deps import Deps  # noqa: E402
from qaflow_mail.server.http import build_app  # noqa: E402

# A vocabulary of 5,000 made-up words drawn with a Zipf-like skew: a few common words, a long tail, as in real text.
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "sho", "vin", "del", "par", "quo", "sem", "tor", "ul", "bex", "fi"]
VOCABULARY = sorted({"".join(random.Random(i).choices(_SYLLABLES, k=2 + i % 3)) for i in range(6000)})[:5000]
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCABULARY))]
CLIENTS = 4
TOPIC_POSTS = 20


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(VOCABULARY, WEIGHTS, k=n)).capitalize() + "."


def generate(path: Path, *, posts: int, topics: int, seed: int = 7) -> None:
    """Fill a migrated SQLite file: a quarter of the topics get TOPIC_POSTS posts, the rest share the others."""
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    stamp = lambda t: t.replace(tzinfo=None).isoformat(sep=" ")  # noqa: E731 - UTCDateTime's SQLite text
    db.executemany("INSERT INTO users (id, email, display_name, is_admin, status, bounce_score, announcements_muted,"
                   " created_at) VALUES (?, ?, ?, 0, 'active', 0, 0, ?)",
                   [(i, f"user{i}@example.org", f"User {i}", stamp(start)) for i in range(1, 501)])
    db.execute("INSERT OR IGNORE INTO categories (slug, name, allow_strangers, created_at) VALUES "
               "('general', 'General', 0, ?)", (stamp(start),))
    category_id = db.execute("SELECT id FROM categories WHERE slug = 'general'").fetchone()[0]
    per_topic = [TOPIC_POSTS if t % 4 == 0 else 0 for t in range(topics)]
    rest = posts - sum(per_topic)
    small = [t for t in range(topics) if per_topic[t] == 0]
    for index, t in enumerate(small):
        per_topic[t] = rest // len(small) + (1 if index < rest % len(small) else 0)
    post_id = 0
    topic_rows, post_rows = [], []
    for t in range(topics):
        topic_id = t + 1
        created = start + timedelta(minutes=t * 7)
        subject = _sentence(rng, 6)
        n = max(per_topic[t], 1)
        topic_rows.append((topic_id, category_id, rng.randint(1, 500), subject, stamp(created),
                           stamp(created + timedelta(minutes=n)), rng.randint(0, 5000)))
        first = post_id + 1
        for k in range(n):
            post_id += 1
            body = "\n\n".join(_sentence(rng, rng.randint(12, 30)) for _ in range(rng.randint(2, 4)))
            post_rows.append((post_id, topic_id, rng.randint(1, 500), None if k == 0 else first,
                              f"bench-{post_id}@example.org", subject if k == 0 else f"Re: {subject}", body,
                              stamp(created + timedelta(minutes=k))))
        if len(post_rows) > 20_000:
            _flush(db, topic_rows, post_rows)
    _flush(db, topic_rows, post_rows)
    db.commit()
    db.execute("ANALYZE")
    db.close()


def _flush(db: sqlite3.Connection, topic_rows: list[tuple[object, ...]], post_rows: list[tuple[object, ...]]) -> None:
    db.executemany("INSERT INTO topics (id, category_id, author_id, subject, created_at, last_post_at, views) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", topic_rows)
    db.executemany("INSERT INTO posts (id, topic_id, author_id, parent_id, message_id, subject, body_text, source, "
                   "status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'import', 'published', ?)", post_rows)
    topic_rows.clear()
    post_rows.clear()


LOAD_SCRIPT = r"""
import asyncio, json, sys, time
import aiohttp
async def main(url, seconds, clients):
    latencies = []
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients),
                                     headers={"User-Agent": "Mozilla/5.0 (bench) Firefox/120"}) as http:
        async def client():
            while time.monotonic() < end:
                t0 = time.perf_counter()
                async with http.get(url) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - t0)
        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    latencies.sort()
    print(json.dumps({"requests": len(latencies), "rps": len(latencies) / elapsed,
                      "p50_ms": latencies[len(latencies) // 2] * 1000,
                      "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000}))
asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
"""


async def load(url: str, seconds: float) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", LOAD_SCRIPT, url, str(seconds),
                                                   str(CLIENTS), stdout=subprocess.PIPE)
    out, _ = await process.communicate()
    result: dict[str, float] = json.loads(out)
    return result


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    return runner, port


async def measure(db_path: Path, topic_id: int, seconds: float, only: str | None = None) -> None:
    url = f"sqlite+aiosqlite:///{db_path}"
    settings = Settings(site=SiteSettings(name="QAFlow", domain="forum.test", base_url="http://forum.test",
                                          data_dir=str(db_path.parent)),
                        database=DatabaseSettings(url=url), http=HttpSettings(port=0))
    engine = create_engine(url)
    deps = Deps.build(settings, session_factory(engine))
    forum, forum_port = await serve(build_app(deps))
    page = await asyncio.to_thread(_fetch, f"http://127.0.0.1:{forum_port}/t/{topic_id}")
    fixed = web.Application()

    async def bare(_request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html")

    fixed.router.add_get("/", bare)
    bare_runner, bare_port = await serve(fixed)
    base = f"http://127.0.0.1:{forum_port}"
    rows = [
        ("bare aiohttp handler, fixed page", f"http://127.0.0.1:{bare_port}/"),
        (f"topic page, {TOPIC_POSTS} posts", f"{base}/t/{topic_id}"),
        ("/ (latest topics)", f"{base}/"),
        (f"/search?q={VOCABULARY[0]} (most common word)", f"{base}/search?q={VOCABULARY[0]}"),
        (f"/search?q={VOCABULARY[40]}+{VOCABULARY[400]}", f"{base}/search?q={VOCABULARY[40]}+{VOCABULARY[400]}"),
        (f'/search?q="{VOCABULARY[1]} {VOCABULARY[2]}"', f"{base}/search?q=%22{VOCABULARY[1]}+{VOCABULARY[2]}%22"),
        ("/search?q=quo* (prefix)", f"{base}/search?q=quo*"),
        (f"/search?q={VOCABULARY[0]}&order=newest", f"{base}/search?q={VOCABULARY[0]}&order=newest"),
    ]
    results = {}
    print(f"page size {len(page)} bytes; {CLIENTS} clients, {seconds:.0f} s each")
    for label, target in rows:
        if only is not None and only not in label and not label.startswith("bare"):
            continue
        await load(target, 1.0)  # warm up
        results[label] = result = await load(target, seconds)
        print(f"{label:<44} {result['rps']:8.0f} req/s   p50 {result['p50_ms']:6.1f} ms   "
              f"p95 {result['p95_ms']:6.1f} ms")
    topic_row = f"topic page, {TOPIC_POSTS} posts"
    if topic_row in results:
        ratio = results[topic_row]["rps"] / results["bare aiohttp handler, fixed page"]["rps"]
        print(f"topic page / bare handler: {ratio:.0%} (target ≥ 25 %)")
    await forum.cleanup()
    await bare_runner.cleanup()
    await engine.dispose()


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:  # loopback only
        body: bytes = response.read()
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--topics", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keep", help="directory for the database (kept, reused when present)")
    parser.add_argument("--only", help="measure only the rows whose label contains this (and the bare handler)")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="qaflow-bench-web-"))
    folder.mkdir(parents=True, exist_ok=True)
    db_path = folder / f"web-{args.posts}-{args.topics}.db"
    if not db_path.exists():  # a kept database is reused as it is: delete it after a schema change
        upgrade(f"sqlite+aiosqlite:///{db_path}")
        started = time.monotonic()
        generate(db_path, posts=args.posts, topics=args.topics)
        print(f"generated {args.posts} posts in {args.topics} topics in {time.monotonic() - started:.1f} s")
    topic_id = 4 * (args.topics // 8) + 1  # a topic in the middle with TOPIC_POSTS posts
    asyncio.run(measure(db_path, topic_id, args.seconds, args.only))


if __name__ == "__main__":
    main()
