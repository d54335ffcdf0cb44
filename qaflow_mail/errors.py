"""SMTP replies as values, and the exceptions that carry them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500


OK = SmtpReply(250, "2.0.0", "Message accepted")
RCPT_OK = SmtpReply(250, "2.1.5", "Recipient ok")
SENDER_OK = SmtpReply(250, "2.1.0", "Sender ok")
DISCARDED = SmtpReply(250, "2.0.0", "Message accepted")
UNKNOWN_RECIPIENT = SmtpReply(550, "5.1.1", "No such address here; check the category address on the forum")
BAD_TOKEN = SmtpReply(
    550,
    "5.1.1",
    "This reply address is invalid or has expired; reply from a recent notification or post on the forum",
)
SENDER_NOT_ALLOWED = SmtpReply(
    550, "5.7.1", "Your address is not allowed to post here; register on the forum with this address"
)
NOT_ADMIN = SmtpReply(550, "5.7.1", "Only forum administrators may post announcements")
UNUSABLE_CONTENT = SmtpReply(550, "5.6.0", "The message has no text to post")
TOO_BIG = SmtpReply(552, "5.3.4", "Message too big for this forum")
TOO_MANY_RECIPIENTS = SmtpReply(452, "4.5.3", "Too many recipients")
RATE_LIMITED = SmtpReply(450, "4.7.1", "Too many messages from this sender; try again later")
TEMPORARY_FAILURE = SmtpReply(451, "4.3.0", "Temporary failure, please try again later")
BAD_SYNTAX = SmtpReply(501, "5.1.3", "Bad address syntax")


class Rejected(Exception):
    """A message or recipient refused for good, with the reply to give."""

    def __init__(self, reply: SmtpReply, reason: str | None = None) -> None:
        super().__init__(reason or reply.text)
        self.reply = reply
        self.reason = reason or reply.text


class TempFailure(Exception):
    """A failure the sender should retry later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reply = TEMPORARY_FAILURE
