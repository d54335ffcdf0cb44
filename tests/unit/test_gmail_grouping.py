"""Gmail-style conversations: Gmail puts two messages in one conversation when their subjects are the same once
reply/forward markers and list tags are set aside, and one names the other in References or In-Reply-To. The
notification of an answer, with the subject our template gives it and the threading headers our notifier sets,
must join the question the asker sent."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

from qaflow_mail.mail.compose import compose, to_bytes
from qaflow_mail.mail.threads import subject_key
from qaflow_mail.outbound.render import MailTemplate, Renderer
from tests.unit.test_render import SAMPLE_CONTEXTS

QUESTION_ID = "alice-q1@example.org"


def ids_in(value: object) -> set[str]:
    return {part.strip("<>") for part in str(value or "").split()}


def same_conversation(first: EmailMessage, second: EmailMessage) -> bool:
    """The model of Gmail's grouping the notifier is held to (subject_key strips markers and [list tags])."""
    if subject_key(str(first["Subject"])) != subject_key(str(second["Subject"])):
        return False
    def names(message: EmailMessage, other: EmailMessage) -> bool:
        linked = ids_in(message["References"]) | ids_in(message["In-Reply-To"])
        return str(other["Message-ID"]).strip("<>") in linked
    return names(first, second) or names(second, first)


def question(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "alice@example.org", "general@forum.test", subject
    message["Message-ID"] = f"<{QUESTION_ID}>"
    message.set_content("I forgot it.")
    return message


def notification(topic_subject: str, *, references: tuple[str, ...], in_reply_to: str | None) -> EmailMessage:
    """An answer's notification: the subject from our template, the threading headers as given, composed by the
    composer every notification goes through."""
    context = SAMPLE_CONTEXTS[MailTemplate.NOTIFY_POST]
    rendered = Renderer().render(MailTemplate.NOTIFY_POST, {
        **context, "topic": {**context["topic"], "subject": topic_subject}, "post": {**context["post"],
                                                                                       "is_first": False},
    })
    raw = to_bytes(compose(
        from_name="Bob via Forum", from_address="notifications@forum.test", to="alice@example.org",
        subject=rendered.subject, text=rendered.text, html=None, message_id="post-2.abc@forum.test",
        in_reply_to=in_reply_to, references=references, reply_to=None, list_headers=None,
        date=datetime(2026, 3, 1, tzinfo=UTC),
    ))
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_the_answer_joins_the_question_alice_sent() -> None:
    sent = question("How do I reset my password?")
    answer = notification("How do I reset my password?", references=("post-1.abc@forum.test", QUESTION_ID),
                          in_reply_to=QUESTION_ID)
    assert str(answer["Subject"]).startswith("Re: [")  # a list tag and a marker, both set aside
    assert same_conversation(sent, answer)


def test_a_subject_alone_or_references_alone_do_not_join() -> None:
    sent = question("How do I reset my password?")
    only_ours = notification("How do I reset my password?", references=("post-1.abc@forum.test",),
                             in_reply_to="post-1.abc@forum.test")
    assert not same_conversation(sent, only_ours)  # what the issue saw: References named only our own ids
    renamed = notification("Password reset (solved)", references=("post-1.abc@forum.test", QUESTION_ID),
                           in_reply_to=QUESTION_ID)
    assert not same_conversation(sent, renamed)
