"""The membership mails and pages say what a mode or notify confirmation does, for every choice, and escape the
category's name in HTML."""

from __future__ import annotations

import pytest

from qaflow_mail.outbound.render import MailTemplate, PageTemplate, Renderer
from tests.unit.test_render import SAMPLE_CONTEXTS

HOSTILE = "Py<b>thon</b>"
EXPECTED = {
    ("mode", "weekly"): "weekly digests of",
    ("mode", "each"): "every new post of",
    ("mode", "mute"): "emails about",
    ("notify", "all"): "every topic",
    ("notify", "direct"): "your posts",
    ("notify", "off"): "no replies",
}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.mark.parametrize(("action", "mode"), list(EXPECTED))
@pytest.mark.parametrize("name", [MailTemplate.NOTICE_CONFIRM_MEMBERSHIP, MailTemplate.NOTICE_MEMBERSHIP_DONE])
def test_mails_name_the_change(renderer: Renderer, name: MailTemplate, action: str, mode: str) -> None:
    rendered = renderer.render(name, {**SAMPLE_CONTEXTS[name], "action": action, "mode": mode, "target": HOSTILE})
    words = EXPECTED[action, mode]
    if name is MailTemplate.NOTICE_CONFIRM_MEMBERSHIP:
        words = words.replace("your posts", "its own posts")
    assert words in rendered.text and "\n" not in rendered.subject
    assert (HOSTILE in rendered.text) is (action == "mode")
    assert rendered.html is not None and "<b>thon" not in rendered.html
    assert "stop getting" not in rendered.text or mode == "mute"  # never worded as a leave


@pytest.mark.parametrize(("action", "mode"), list(EXPECTED))
@pytest.mark.parametrize("name", [PageTemplate.MEMBERSHIP_CONFIRM, PageTemplate.MEMBERSHIP_DONE])
def test_pages_name_the_change(renderer: Renderer, name: PageTemplate, action: str, mode: str) -> None:
    page = renderer.render_page(name, {**SAMPLE_CONTEXTS[name], "action": action, "mode": mode, "target": HOSTILE})
    assert "<b>thon" not in page
    assert (f"&ldquo;{mode}&rdquo;" in page) is (action == "notify")
