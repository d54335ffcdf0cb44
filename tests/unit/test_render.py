from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from jinja2 import TemplateNotFound, UndefinedError
from markupsafe import Markup

from qaflow_mail.mail.compose import compose, to_bytes, via_display_name
from qaflow_mail.outbound.render import (
    HTML_SUFFIX,
    SUBJECT_SUFFIX,
    TEMPLATES_DIR,
    TEXT_SUFFIX,
    MailTemplate,
    PageTemplate,
    Renderer,
    mail_address,
    mailto_url,
    paragraphs,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "qaflow_mail"
SITE = {"name": "QAFlow", "base_url": "https://forum.example.org"}
CATEGORY = {"name": "Python", "slug": "python"}
SCRIPT = "<script>alert('x')</script>"

SAMPLE_CONTEXTS: dict[str, dict[str, Any]] = {
    MailTemplate.NOTIFY_POST: {
        "site": SITE,
        "category": CATEGORY,
        "topic": {"id": 7, "subject": "How do I parse mail?", "url": "https://forum.example.org/t/7"},
        "post": {
            "id": 42,
            "author_name": "Alice",
            "text": "Use the email package.\n\nIt works.",
            "html": None,
            "is_first": True,
        },
        "unsubscribe_url": "https://forum.example.org/email/unsubscribe/abc234",
        "unsubscribe_mailto": "unsubscribe+abc234@forum.example.org",
        "reply_address": "reply+xyz234@forum.example.org",
    },
    MailTemplate.NOTICE_REJECTED: {
        "site": SITE,
        "reason": "Your address is not allowed to post here",
        "advice": "Register on the forum with this address, then send your message again.",
        "original_subject": "Question about parsing",
        "quoted_lines": ["Hello,", "", "how do I parse mail?"],
    },
    MailTemplate.NOTICE_ATTACHMENTS_DROPPED: {
        "site": SITE,
        "original_subject": "Scanned invoice",
        "dropped": [{"filename": "invoice.pdf", "reason": "declared application/pdf but its content is not"}],
    },
    MailTemplate.NOTICE_UNSUBSCRIBED: {
        "site": SITE,
        "category": CATEGORY,
        "resubscribe_url": "https://forum.example.org/c/python",
        "request_address": "python-request@forum.example.org",
    },
    MailTemplate.NOTICE_CONFIRM_MEMBERSHIP: {
        "site": SITE,
        "action": "join",
        "target": "Python",
        "mode": "daily",
        "confirm_address": "confirm+abc234@forum.example.org",
        "confirm_url": "https://forum.example.org/confirm/abc234",
        "expires": "2026-03-08 12:00 UTC",
        "page": "https://forum.example.org/c/python",
    },
    MailTemplate.NOTICE_MEMBERSHIP_DONE: {
        "site": SITE,
        "action": "join",
        "target": "Python",
        "mode": "each",
        "post_address": "python@forum.example.org",
        "join_address": "python-join@forum.example.org",
        "leave_address": "python-leave@forum.example.org",
        "request_address": "python-request@forum.example.org",
    },
    MailTemplate.NOTICE_MODERATE: {
        "site": SITE,
        "category": CATEGORY,
        "post": {"id": 9, "subject": SCRIPT, "author_name": "Mallory", "author_email": "m@example.net"},
        "reason": "a first post by a stranger",
        "quoted_lines": [SCRIPT, "Buy now"],
        "omitted_lines": 0,
        "moderate_address": "moderate+abc234@forum.example.org",
    },
    MailTemplate.NOTICE_MODERATED: {
        "site": SITE,
        "category": CATEGORY,
        "post": {"id": 9, "subject": "Question"},
        "outcome": "rejected",
        "reason": "off topic",
    },
    MailTemplate.COMMAND_ANSWER: {
        "site": SITE,
        "category": CATEGORY,
        "results": [{"line": "mode daily", "outcome": "done"}, {"line": "status", "outcome": "you follow python"}],
        "request_address": "python-request@forum.example.org",
        "join_address": "python-join@forum.example.org",
        "leave_address": "python-leave@forum.example.org",
    },
    MailTemplate.NOTICE_SHUNTED: {
        "site": SITE,
        "shunt_id": 7,
        "attempts": 3,
        "sender": "alice@example.org",
        "original_subject": "Question about parsing",
        "message_id": "q1@example.org",
        "error": "ValueError: trimmer bug",
    },
    PageTemplate.UNSUBSCRIBE_CONFIRM: {
        "site": SITE,
        "category": CATEGORY,
        "email": "bob@example.com",
        "action_url": "https://forum.example.org/email/unsubscribe/abc234",
    },
    PageTemplate.UNSUBSCRIBE_DONE: {
        "site": SITE,
        "category": None,
        "email": "bob@example.com",
        "resubscribe_url": "https://forum.example.org/my/preferences",
    },
    PageTemplate.UNSUBSCRIBE_ERROR: {"site": SITE, "reason": "tampered"},
    PageTemplate.MEMBERSHIP_CONFIRM: {
        "site": SITE, "action": "join", "target": "Python", "mode": "daily", "email": "ne***@example.net",
        "action_url": "/confirm/abc234",
    },
    PageTemplate.MEMBERSHIP_DONE: {
        "site": SITE, "action": "join", "target": "Python", "mode": "each", "email": "ne***@example.net",
        "page": "https://forum.example.org/c/python",
    },
    PageTemplate.MEMBERSHIP_ERROR: {"site": SITE, "reason": "used"},
    PageTemplate.FOLLOW_SENT: {
        "site": SITE, "category": CATEGORY, "address": "newcomer@example.net", "back_url": "/c/python",
    },
    PageTemplate.FOLLOW_FORM: {
        "site": SITE, "category": CATEGORY, "message": "That is not an email address", "follow_address": SCRIPT,
        "follow_mode": "weekly", "back_url": "/c/python",
    },
}

# A quoted "<folder>/<name>" literal in the package is a template name (folders as in templates/).
_TEMPLATE_NAME_RE = re.compile(r"""["']((?:notify|digest|announce|command|notice|web)/[a-z0-9_/-]+)["']""")


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def _post_context(**post: Any) -> dict[str, Any]:
    context = dict(SAMPLE_CONTEXTS[MailTemplate.NOTIFY_POST])
    context["post"] = {**context["post"], **post}
    return context


def _is_mail_template(name: str) -> bool:
    return (TEMPLATES_DIR / (name + SUBJECT_SUFFIX)).is_file() and (TEMPLATES_DIR / (name + TEXT_SUFFIX)).is_file()


def _is_page_template(name: str) -> bool:
    return (TEMPLATES_DIR / (name + HTML_SUFFIX)).is_file()


# Consistency: what the code names exists, and renders.


def test_every_named_template_has_a_sample_context() -> None:
    assert set(SAMPLE_CONTEXTS) == {*MailTemplate, *PageTemplate}


@pytest.mark.parametrize("name", list(MailTemplate))
def test_every_mail_template_exists_and_renders(renderer: Renderer, name: MailTemplate) -> None:
    assert _is_mail_template(name), f"missing {name}{SUBJECT_SUFFIX} or {name}{TEXT_SUFFIX}"
    rendered = renderer.render(name, SAMPLE_CONTEXTS[name])
    assert rendered.subject
    assert "\n" not in rendered.subject
    assert rendered.text.endswith("\n")
    assert not rendered.text.startswith("\n")
    assert rendered.html is not None
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("name", list(PageTemplate))
def test_every_page_exists_and_renders(renderer: Renderer, name: PageTemplate) -> None:
    assert _is_page_template(name)
    page = renderer.render_page(name, SAMPLE_CONTEXTS[name])
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert '<meta name="referrer" content="no-referrer">' in page  # the URL carries a token
    assert '<meta name="robots" content="noindex">' in page


def test_every_template_name_in_the_code_exists() -> None:
    named: set[str] = set()
    for source in PACKAGE_DIR.rglob("*.py"):
        named.update(_TEMPLATE_NAME_RE.findall(source.read_text(encoding="utf-8")))
    assert {*MailTemplate, *PageTemplate} <= named
    missing = sorted(name for name in named if not (_is_mail_template(name) or _is_page_template(name)))
    assert not missing, f"templates named in qaflow_mail/ but absent from templates/: {missing}"


def test_every_template_file_compiles(renderer: Renderer) -> None:
    names = renderer.env.list_templates(extensions=["j2"])
    assert len(names) >= 3 * len(MailTemplate) + len(PageTemplate)
    for name in names:
        renderer.env.get_template(name)


# Escaping: HTML is escaped unless the caller marked it safe; text is never escaped.


def test_html_part_escapes_a_script_in_the_post(renderer: Renderer) -> None:
    rendered = renderer.render(
        MailTemplate.NOTIFY_POST,
        _post_context(text=f"Look: {SCRIPT}\nsecond line", author_name=f"Mallory {SCRIPT}"),
    )
    assert rendered.html is not None
    assert "<script" not in rendered.html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in rendered.html
    assert "second line" in rendered.html
    assert SCRIPT in rendered.text  # the text part is plain text: nothing to escape


def test_sanitised_post_html_passes_through_but_plain_strings_do_not(renderer: Renderer) -> None:
    safe = renderer.render(MailTemplate.NOTIFY_POST, _post_context(html=Markup("<p>Use <code>email</code></p>")))
    assert safe.html is not None
    assert "<p>Use <code>email</code></p>" in safe.html
    unmarked = renderer.render(MailTemplate.NOTIFY_POST, _post_context(html=f"<p>{SCRIPT}</p>"))
    assert unmarked.html is not None
    assert "<script" not in unmarked.html
    assert "&lt;p&gt;" in unmarked.html


def test_hostile_topic_subject_and_urls_are_escaped(renderer: Renderer) -> None:
    context = _post_context()
    context["topic"] = {
        "id": 7,
        "subject": f'"><img src=x onerror=alert(1)> {SCRIPT}',
        "url": 'https://x/"onmouseover="x',
    }
    rendered = renderer.render(MailTemplate.NOTIFY_POST, context)
    assert rendered.html is not None
    assert "<img" not in rendered.html
    assert '"onmouseover' not in rendered.html
    assert "&#34;onmouseover=&#34;x" in rendered.html


def test_subject_is_one_line(renderer: Renderer) -> None:
    context = _post_context(is_first=False)
    context["topic"] = {**context["topic"], "subject": "Multi\nline\r\n  subject"}
    rendered = renderer.render(MailTemplate.NOTIFY_POST, context)
    assert rendered.subject == "Re: [Python] Multi line subject"
    first = renderer.render(MailTemplate.NOTIFY_POST, _post_context(is_first=True))
    assert first.subject == "[Python] How do I parse mail?"


def test_post_footer(renderer: Renderer) -> None:
    rendered = renderer.render(MailTemplate.NOTIFY_POST, SAMPLE_CONTEXTS[MailTemplate.NOTIFY_POST])
    body, footer = rendered.text.split("\n-- \n")
    assert body == "Use the email package.\n\nIt works.\n"
    assert "Alice started" in footer
    assert "https://forum.example.org/t/7" in footer
    assert "Reply to this email to respond" in footer
    assert "https://forum.example.org/email/unsubscribe/abc234" in footer
    assert "unsubscribe+abc234@forum.example.org" in footer
    assert rendered.html is not None
    assert 'href="mailto:unsubscribe+abc234@forum.example.org"' in rendered.html
    assert "<p>Use the email package.</p>\n<p>It works.</p>" in rendered.html


def test_rejection_notice_quotes_at_most_ten_lines(renderer: Renderer) -> None:
    context = dict(SAMPLE_CONTEXTS[MailTemplate.NOTICE_REJECTED])
    context["quoted_lines"] = ["first", "", *(f"line {i}" for i in range(30))]
    context["reason_code"] = "5.7.1"
    rendered = renderer.render(MailTemplate.NOTICE_REJECTED, context)
    quoted = [line for line in rendered.text.splitlines() if line.startswith(">")]
    assert quoted == ["> first", ">", *(f"> line {i}" for i in range(8))]
    assert "Reason: Your address is not allowed to post here (5.7.1)\n\nWhat to do: Register" in rendered.text
    assert rendered.subject == "[QAFlow] Your message was not posted: Question about parsing"
    assert rendered.html is not None
    assert rendered.html.count("<br>") == 9


def test_rejection_notice_without_subject_or_quote(renderer: Renderer) -> None:
    context = {**SAMPLE_CONTEXTS[MailTemplate.NOTICE_REJECTED], "original_subject": "", "quoted_lines": []}
    rendered = renderer.render(MailTemplate.NOTICE_REJECTED, context)
    assert rendered.subject == "[QAFlow] Your message was not posted"
    assert ">" not in rendered.text
    assert "Reason: Your address is not allowed to post here\n" in rendered.text


def test_unsubscribed_notice_for_a_category_and_for_announcements(renderer: Renderer) -> None:
    category = renderer.render(MailTemplate.NOTICE_UNSUBSCRIBED, SAMPLE_CONTEXTS[MailTemplate.NOTICE_UNSUBSCRIBED])
    assert category.subject == "[QAFlow] You are unsubscribed from Python"
    assert "python-request@forum.example.org" in category.text
    context = {**SAMPLE_CONTEXTS[MailTemplate.NOTICE_UNSUBSCRIBED], "category": None, "request_address": None}
    announcements = renderer.render(MailTemplate.NOTICE_UNSUBSCRIBED, context)
    assert announcements.subject == "[QAFlow] You are unsubscribed from announcements"
    assert "-request@" not in announcements.text


def test_unsubscribe_pages(renderer: Renderer) -> None:
    confirm = renderer.render_page(PageTemplate.UNSUBSCRIBE_CONFIRM, SAMPLE_CONTEXTS[PageTemplate.UNSUBSCRIBE_CONFIRM])
    assert '<form method="post" action="https://forum.example.org/email/unsubscribe/abc234">' in confirm
    assert 'name="List-Unsubscribe" value="One-Click"' in confirm
    expired = renderer.render_page(PageTemplate.UNSUBSCRIBE_ERROR, {"site": SITE, "reason": "expired"})
    assert "has expired" in expired
    invalid = renderer.render_page(PageTemplate.UNSUBSCRIBE_ERROR, {"site": SITE, "reason": "tampered"})
    assert "is not valid" in invalid
    assert "Nothing was changed" in invalid
    hostile = renderer.render_page(
        PageTemplate.UNSUBSCRIBE_DONE, {**SAMPLE_CONTEXTS[PageTemplate.UNSUBSCRIBE_DONE], "email": SCRIPT}
    )
    assert "<script" not in hostile


# The environment itself.


def test_missing_context_key_is_an_error(renderer: Renderer) -> None:
    context = dict(SAMPLE_CONTEXTS[MailTemplate.NOTIFY_POST])
    del context["reply_address"]
    with pytest.raises(UndefinedError):
        renderer.render(MailTemplate.NOTIFY_POST, context)


def test_unknown_template_is_an_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateNotFound):
        renderer.render("notify/nothing", {})


def test_templates_dir_override_and_optional_html(tmp_path: Path) -> None:
    (tmp_path / "greet.subject.j2").write_text("Hello {{ name }}\n")
    (tmp_path / "greet.txt.j2").write_text("Hi {{ name }} & <friends>\n")
    rendered = Renderer(tmp_path).render("greet", {"name": "<Bob>"})
    assert rendered.subject == "Hello <Bob>"
    assert rendered.text == "Hi <Bob> & <friends>\n"
    assert rendered.html is None


def test_a_missing_include_inside_the_html_template_is_not_swallowed(tmp_path: Path) -> None:
    (tmp_path / "greet.subject.j2").write_text("s")
    (tmp_path / "greet.txt.j2").write_text("t")
    (tmp_path / "greet.html.j2").write_text('{% include "nope.html.j2" %}')
    with pytest.raises(TemplateNotFound):
        Renderer(tmp_path).render("greet", {})


def test_filters() -> None:
    assert paragraphs("a <b>\nc\n\n\nd") == Markup("<p>a &lt;b&gt;<br>\nc</p>\n<p>d</p>")
    assert paragraphs("") == Markup("")
    assert mailto_url("x@y.org") == "mailto:x@y.org"
    assert mailto_url("mailto:x@y.org?subject=a") == "mailto:x@y.org?subject=a"
    assert mail_address("MAILTO:x@y.org?subject=a") == "x@y.org"
    assert mail_address("x@y.org") == "x@y.org"


def test_rendered_notification_composes_into_a_clean_message(renderer: Renderer) -> None:
    rendered = renderer.render(MailTemplate.NOTIFY_POST, _post_context(text=f"Grüße {SCRIPT}"))
    msg = compose(
        from_name=via_display_name("Alice", "QAFlow"),
        from_address="notifications@forum.example.org",
        to="bob@example.com",
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        message_id="post-42.abc@forum.example.org",
        in_reply_to=None,
        references=(),
        reply_to="reply+xyz234@forum.example.org",
        list_headers=None,
        date=datetime(2024, 5, 1, tzinfo=UTC),
    )
    parsed = email.message_from_bytes(to_bytes(msg), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    plain, html = (parsed.get_body((kind,)) for kind in ("plain", "html"))
    assert isinstance(plain, EmailMessage)
    assert isinstance(html, EmailMessage)
    assert f"Grüße {SCRIPT}" in str(plain.get_content())
    assert "<script" not in str(html.get_content())
    assert "-- \r\n" in str(plain.get_content()) or "-- \n" in str(plain.get_content())
