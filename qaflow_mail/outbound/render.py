"""The one Jinja2 environment: mail templates (subject, text, optional HTML) and web pages, and how people
are named in them.

A mail template ``<name>`` is the files ``templates/<name>.subject.j2``, ``<name>.txt.j2`` and optionally
``<name>.html.j2``; a page is ``templates/<name>.html.j2``. Only ``*.html.j2`` is autoescaped: values meant
as HTML (sanitised post bodies) must arrive as ``markupsafe.Markup``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound
from markupsafe import Markup, escape

if TYPE_CHECKING:
    from qaflow_mail.db.models import User

def _templates_dir() -> Path:
    """The templates shipped inside the package (a wheel install), else the checkout's top-level folder."""
    here = Path(__file__).resolve().parent
    packaged = here.parent / "templates"
    return packaged if packaged.is_dir() else here.parents[1] / "templates"


TEMPLATES_DIR = _templates_dir()

SUBJECT_SUFFIX = ".subject.j2"
TEXT_SUFFIX = ".txt.j2"
HTML_SUFFIX = ".html.j2"


class MailTemplate(StrEnum):
    NOTIFY_POST = "notify/post"
    NOTICE_REJECTED = "notice/rejected"
    NOTICE_UNSUBSCRIBED = "notice/unsubscribed"
    NOTICE_SHUNTED = "notice/shunted"
    NOTICE_ATTACHMENTS_DROPPED = "notice/attachments_dropped"
    NOTICE_CONFIRM_MEMBERSHIP = "notice/confirm_membership"
    NOTICE_MEMBERSHIP_DONE = "notice/membership_done"
    NOTICE_MODERATE = "notice/moderate"
    NOTICE_MODERATED = "notice/moderated"
    COMMAND_ANSWER = "command/answer"


class PageTemplate(StrEnum):
    UNSUBSCRIBE_CONFIRM = "web/unsubscribe_confirm"
    UNSUBSCRIBE_DONE = "web/unsubscribe_done"
    UNSUBSCRIBE_ERROR = "web/unsubscribe_error"
    MEMBERSHIP_CONFIRM = "web/membership_confirm"
    MEMBERSHIP_DONE = "web/membership_done"
    MEMBERSHIP_ERROR = "web/membership_error"
    FOLLOW_SENT = "web/follow_sent"
    FOLLOW_FORM = "web/follow_form"


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def build_environment(templates_dir: Path | str | None = None) -> Environment:
    env = Environment(
        loader=FileSystemLoader(Path(templates_dir) if templates_dir is not None else TEMPLATES_DIR),
        undefined=StrictUndefined,
        autoescape=_autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )
    env.filters["paragraphs"] = paragraphs
    env.filters["mailto_url"] = mailto_url
    env.filters["mail_address"] = mail_address
    return env


class Renderer:
    """Renders mail templates and web pages from one environment built once at startup."""

    def __init__(self, templates_dir: Path | str | None = None) -> None:
        self.env = build_environment(templates_dir)

    def render(self, name: str, context: Mapping[str, Any]) -> Rendered:
        values = dict(context)
        subject = self.env.get_template(name + SUBJECT_SUFFIX).render(values)
        text = self.env.get_template(name + TEXT_SUFFIX).render(values)
        html_name = name + HTML_SUFFIX
        try:
            html_template = self.env.get_template(html_name)
        except TemplateNotFound as exc:
            if exc.name != html_name:  # a missing include inside an existing template is a real error
                raise
            html = None
        else:
            html = html_template.render(values)
        return Rendered(subject=" ".join(subject.split()), text=_tidy_text(text), html=html)

    def render_page(self, name: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(name + HTML_SUFFIX).render(dict(context))


def author_name(user: User) -> str:
    """How a user is named to others: the display name, else the local part of the address."""
    return " ".join(user.display_name.split()) or user.email.partition("@")[0]


def paragraphs(text: str) -> Markup:
    """Plain text as HTML: escaped, blank lines become paragraphs, single newlines become <br>."""
    blocks = [block for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    return Markup("\n").join(
        Markup("<p>{}</p>").format(Markup("<br>\n").join(escape(line) for line in block.strip("\n").split("\n")))
        for block in blocks
    )


def mailto_url(address: str) -> str:
    """'mailto:x@y' for an address or an existing mailto URL."""
    return address if address.lower().startswith("mailto:") else f"mailto:{address}"


def mail_address(value: str) -> str:
    """The bare address of an address or a mailto URL (query dropped), for display."""
    if value.lower().startswith("mailto:"):
        return value[len("mailto:") :].split("?", 1)[0]
    return value


def _autoescape(template_name: str | None) -> bool:
    return template_name is not None and template_name.endswith(HTML_SUFFIX)


def _tidy_text(text: str) -> str:
    return text.strip("\n") + "\n"
