"""The topic page in a real headless Chromium: a catalogue of known XSS vectors sent as HTML mail through the SMTP
listener runs no script and loads nothing from another origin. Also takes the README's screenshots."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db.models import Post
from qaflow_mail.server.app import Running
from tests.browser.cdp import INSTALL_HINT, Chromium, chromium, chromium_binary
from tests.browser.xss_vectors import VECTORS
from tests.smtp_client import make_mail
from tests.web_forum import ALICE, BOB, CAROL, DOMAIN, WebForum, web_forum

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(chromium_binary() is None, reason=f"chromium not installed: {INSTALL_HINT}")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    async with chromium(tmp_path / "chromium") as running_browser:
        yield running_browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The catalogue arrives as replies faster than people write: the storm guard would hold most of them."""
    return replace(settings, limits=replace(settings.limits, topic_replies_per_10min=len(VECTORS) + 1,
                                            ping_pong_replies=len(VECTORS) + 1))


@pytest.fixture
async def forum(gateway: Running) -> AsyncIterator[WebForum]:
    async with web_forum(gateway) as running_forum:
        yield running_forum


def html_mail(sender: str, subject: str, html: str, *, message_id: str, in_reply_to: str | None = None) -> EmailMessage:
    msg = make_mail(sender=sender, to=f"general@{DOMAIN}", subject=subject, body="(html)", message_id=message_id,
                    in_reply_to=in_reply_to)
    msg.add_alternative(f"<html><body><p>Vector follows.</p>{html}<p>End.</p></body></html>", subtype="html")
    return msg


async def test_no_vector_runs_script_or_leaves_the_origin(forum: WebForum, browser: Chromium) -> None:
    assert len(VECTORS) >= 50
    opening = html_mail(ALICE, '<script>window.__xss=1</script>"><img src=x onerror=window.__xss=1>', VECTORS[0],
                        message_id="<xss0@client.test>")
    assert await forum.mail(ALICE, f"general@{DOMAIN}", message=opening) == 250
    for index, vector in enumerate(VECTORS[1:], start=1):
        sender = (ALICE, BOB, CAROL)[index % 3]  # stays under the per-sender hourly rate
        msg = html_mail(sender, f"Re: vector {index} {vector[:60]}", vector, message_id=f"<xss{index}@client.test>",
                        in_reply_to="<xss0@client.test>")
        assert await forum.mail(sender, f"general@{DOMAIN}", message=msg) == 250, vector
    async with forum.run.deps.sessions() as session:
        topic_id = await session.scalar(select(Post.topic_id).where(Post.message_id == "xss0@client.test"))
        posts = len((await session.scalars(select(Post.id).where(Post.topic_id == topic_id))).all())
    assert posts == len(VECTORS)

    origin = forum.base
    async with browser.tab() as tab:
        await tab.open(f"{origin}/t/{topic_id}")
        assert await tab.evaluate("document.querySelectorAll('section.post').length") == len(VECTORS)
        # Focus and click what could carry a handler, as a reader would.
        await tab.evaluate("document.querySelectorAll('a,p,div,input,button').forEach(e=>{try{e.focus()}catch(x){}})")
        assert await tab.evaluate("typeof window.__xss") == "undefined"
        assert tab.named("Runtime.consoleAPICalled") == []
        assert tab.named("Page.javascriptDialogOpening") == []
        assert tab.named("Runtime.exceptionThrown") == []
        requested = [event["request"]["url"] for event in tab.named("Network.requestWillBeSent")]
        assert requested and all(url.startswith(origin + "/") for url in requested), requested
        dangerous = await tab.evaluate("""[...document.querySelectorAll('*')].flatMap(e => [...e.attributes]
            .filter(a => a.name.startsWith('on') || /^\\s*(javascript|data|vbscript):/i.test(a.value))
            .map(a => e.tagName + ' ' + a.name + '=' + a.value))""")
        assert dangerous == []
        # The page's own forms: search, and "Follow by email" (posting to this site only).
        assert await tab.evaluate("document.querySelectorAll('form[action=\"/c/general/follow\"]').length") == 1
        assert await tab.evaluate("document.querySelectorAll('script,iframe,object,embed,base,meta[http-equiv],"
                                  "form:not([action=\"/search\"]):not([action=\"/c/general/follow\"]),style,"
                                  "link:not([rel=stylesheet]):not([rel=alternate])').length") == 0


def chart_png(width: int = 560, height: int = 200) -> bytes:
    """A small bar chart as a PNG (stdlib only), so the screenshot shows an image attachment in place."""
    bars = [40, 90, 65, 150, 120, 170, 80]
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            bar = x * len(bars) // width
            inside = (x % (width // len(bars))) > 10 and height - y < bars[bar]
            row += bytes((10, 102, 194) if inside else (238, 242, 247))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


async def seed_screenshot_forum(forum: WebForum) -> int:
    topics = [
        (ALICE, "How do I keep replies threaded in Outlook?", "Our team replies from Outlook and the forum shows "
         "some answers as new topics. What headers does the gateway look at?"),
        (BOB, "Digest arrives at 7:00 UTC, not local time", "I set my time zone with the CLI but the daily digest "
         "still comes at seven in the morning UTC. Is there a setting I missed?"),
        (CAROL, "Welcome to the new forum", "Say hello and tell us what you are working on."),
    ]
    for index, (sender, subject, body) in enumerate(topics):
        assert await forum.mail(sender, f"general@{DOMAIN}", subject=subject, body=body,
                                message_id=f"<seed{index}@client.test>") == 250
    shot = make_mail(sender=ALICE, to=f"general@{DOMAIN}", subject="Upload fails above 10 MB",
                     body="See the chart.", message_id="<img1@client.test>")
    shot.add_alternative('<p>Uploads fail once the file is over 10 MB; the chart shows the failures per day:</p>'
                         '<p><img src="cid:chart@client.test" alt="Failed uploads per day"></p>', subtype="html")
    shot.get_payload()[1].add_related(chart_png(), maintype="image", subtype="png", cid="<chart@client.test>",
                                      filename="failures.png")
    shot.add_attachment(b"Traceback (most recent call last): ...", maintype="text", subtype="plain",
                        filename="trace.txt")
    assert await forum.mail(ALICE, f"general@{DOMAIN}", message=shot) == 250
    for index, (sender, body) in enumerate([
        (BOB, "That is the stack trace I get as well. It goes away when the attachment is under 10 MB."),
        (CAROL, "Fixed in the next release: the size limit is now configurable under [limits]."),
    ]):
        assert await forum.mail(sender, f"general@{DOMAIN}", subject="Re: Upload fails above 10 MB", body=body,
                                message_id=f"<seedreply{index}@client.test>", in_reply_to="<img1@client.test>") == 250
    async with forum.run.deps.sessions() as session:
        topic_id = await session.scalar(select(Post.topic_id).where(Post.message_id == "img1@client.test"))
    assert topic_id is not None
    return int(topic_id)


async def test_screenshots(forum: WebForum, browser: Chromium, tmp_path: Path) -> None:
    topic_id = await seed_screenshot_forum(forum)
    pages = {"index": "/", "category": "/c/general", "topic": f"/t/{topic_id}"}
    shots = []
    async with browser.tab() as tab:
        for name, path in pages.items():
            for label, width in (("desktop", 1280), ("phone", 390)):
                await tab.send("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                               mobile=width < 600)
                await tab.open(forum.base + path)
                # Readable from 360 px: nothing wider than the viewport.
                fits = await tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
                assert fits, (name, label)
                target = tmp_path / f"{name}-{label}.png"
                await tab.screenshot(target, width=width)
                assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                shots.append(target)
        if os.environ.get("QAFLOW_WRITE_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for shot in shots:
                shutil.copy(shot, SCREENSHOTS / shot.name)
