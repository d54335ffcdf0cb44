"""Every SMTP reply the gateway gives, in one catalogue.

A reply is a value: its code and enhanced status code (RFC 3463), the text the sender's MTA shows the person
("what happened; what to do"), and the notice template the gateway mails when the refusal reaches nobody by
SMTP (mail polled over IMAP). ``notice=None`` marks a refusal that must never be answered by mail: the From of
such a message may be forged (announcements, tokens only the real owner holds) or the refusal is temporary.
Steps and listeners name replies from here and never build their own, so this file is the whole list of what a
sender can be told.
"""

from __future__ import annotations

from dataclasses import dataclass

REJECTION_NOTICE = "notice/rejected"


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    enhanced: str
    text: str
    notice: str | None = REJECTION_NOTICE

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> SmtpReply:
        """The same kind of refusal, worded for one case (a limit's figure, an attachment's name)."""
        return SmtpReply(self.code, self.enhanced, text, self.notice)


# --- taken ------------------------------------------------------------------------------------------------------
OK = SmtpReply(250, "2.0.0", "Message accepted", notice=None)
RCPT_OK = SmtpReply(250, "2.1.5", "Recipient ok", notice=None)
# [smtp] accept = "queue": the message is on disk in the inbound queue; the pipeline takes it after the reply.
QUEUED = SmtpReply(250, "2.0.0", "Message accepted for delivery", notice=None)
# The pipeline failed on this message every time: it is kept for the forum's admins instead of retried for days.
SHUNTED = SmtpReply(250, "2.0.0", "Message accepted and kept for the forum's admins", notice=None)

# --- temporary: the sending MTA retries -------------------------------------------------------------------------
TOO_MANY_RECIPIENTS = SmtpReply(452, "4.5.3", "Too many recipients", notice=None)
RATE_LIMITED = SmtpReply(450, "4.7.1", "Too many messages from this sender; try again later", notice=None)
TEMPORARY_FAILURE = SmtpReply(451, "4.3.0", "Temporary failure, please try again later", notice=None)
# Connection limits (RFC 5321 §3.8: 421 and close). Too many connections from one client, or in all; too many
# commands that move no mail; no command or DATA bytes for [smtp] idle_timeout.
TOO_MANY_CONNECTIONS = SmtpReply(421, "4.7.0", "Too many connections; try again later", notice=None)
TOO_MANY_JUNK_COMMANDS = SmtpReply(421, "4.7.0", "Too many commands that send no mail; closing", notice=None)
IDLE_TIMEOUT = SmtpReply(421, "4.4.2", "Idle for too long; closing", notice=None)
# More bytes of mail are being processed than [smtp] max_bytes_in_flight allows, for longer than [smtp]
# in_flight_wait: the message is safe with its sender, who tries again shortly.
MAIL_BACKLOG = SmtpReply(452, "4.3.1", "Too much mail in progress; try again shortly", notice=None)
# [smtp] accept = "queue": the queue's file system would have less than [smtp] queue_min_free left.
STORAGE_FULL = SmtpReply(452, "4.3.1", "Insufficient system storage; try again later", notice=None)

# --- addresses (5.1.1) ------------------------------------------------------------------------------------------
UNKNOWN_RECIPIENT = SmtpReply(550, "5.1.1", "No such address here; check the category address on the forum",
                              notice=None)
BAD_TOKEN = SmtpReply(
    550, "5.1.1",
    "This reply address is invalid or has expired; reply from a recent notification or post on the forum",
)
NOT_A_MAILBOX = SmtpReply(
    550, "5.1.1",
    "This address sends notifications and takes no mail: to answer a topic, reply to its reply address",
)
BAD_UNSUBSCRIBE_TOKEN = SmtpReply(
    550, "5.1.1",
    "This unsubscribe address is not valid (it may have been cut off or changed); use the unsubscribe link "
    "or address in a recent email from the forum",
    notice=None,
)
BAD_CONFIRMATION = SmtpReply(
    550, "5.1.1",
    "This confirmation address is not valid; reply to the confirmation email itself, without changing its address",
    notice=None,
)
CONFIRMATION_EXPIRED = SmtpReply(550, "5.1.1", "This confirmation has expired; send the announcement again",
                                 notice=None)

# --- size (5.3.4) -----------------------------------------------------------------------------------------------
TOO_BIG = SmtpReply(552, "5.3.4", "Message too big for this forum")


def too_big(limit: int | None) -> SmtpReply:
    """TOO_BIG with the size limit in it, as the listener says it."""
    return TOO_BIG.with_text(f"{TOO_BIG.text} (at most {limit} bytes)")


TOO_MANY_ATTACHMENTS = SmtpReply(552, "5.3.4", "Too many attachments")
ATTACHMENT_TOO_BIG = SmtpReply(552, "5.3.4", "Attachment too large")

# --- content (5.6.0) --------------------------------------------------------------------------------------------
EMPTY_REPLY = SmtpReply(
    550, "5.6.0", "Your reply is empty once quoted text is removed; write your answer above the quote"
)
NO_TEXT = SmtpReply(
    550, "5.6.0", "Your message has no text and no attachment; write your question or answer in the body"
)
ONLY_SIGNATURE = SmtpReply(550, "5.6.0", "Your reply holds only a signature; write your answer above it")
# The message itself is beyond what the gateway processes ([limits]); it would fail the same way on every retry.
MESSAGE_TOO_COMPLEX = SmtpReply(554, "5.6.0", "Message too complex for this forum", notice=None)
MESSAGE_UNREADABLE = SmtpReply(554, "5.6.0", "Message could not be read; send it again as plain text", notice=None)

# --- policy (5.7.1) ---------------------------------------------------------------------------------------------
SENDER_NOT_ALLOWED = SmtpReply(
    550, "5.7.1",
    "Only members may post in this category; to join, send an empty email to the category's -join address "
    "(general-join@ for general@) and reply to the confirmation, or use \"Follow by email\" on its page",
)

NO_FROM = SmtpReply(550, "5.7.1", "The message has no usable From address", notice=None)
NOT_TOKEN_OWNER = SmtpReply(
    550, "5.7.1", "This reply address was sent to another subscriber; reply from the address that received it"
)
ATTACHMENT_REFUSED = SmtpReply(554, "5.7.1", "Attachment refused")
ANNOUNCEMENTS_ARE_PUBLISHED = SmtpReply(
    550, "5.7.1", "Announcements are published by the forum's admins and take no posts or replies by mail",
)
DIGEST_REPLY = SmtpReply(
    550, "5.7.1",
    "This is a reply to a whole digest, which covers many topics; reply to the address given under the topic "
    "you mean (each topic has its own), or answer on the forum",
)
# Announcements: the From may be forged, so none of these is ever answered by mail.
NOT_ADMIN = SmtpReply(550, "5.7.1", "Only forum administrators may post announcements", notice=None)
NOT_VERIFIED = SmtpReply(
    550, "5.7.1", "Announcements must carry a DKIM signature of your domain; send it from your usual mail server",
    notice=None,
)
CONFIRMATION_USED = SmtpReply(
    550, "5.7.1", "This announcement was already confirmed: a confirmation works once (already used)", notice=None
)
NOT_THE_ADMIN = SmtpReply(
    550, "5.7.1",
    "Only the administrator who sent the announcement can confirm it, from their registered address", notice=None,
)
ANNOUNCEMENT_GONE = SmtpReply(550, "5.7.1", "The announcement can no longer be published; send it again",
                              notice=None)
NOT_CONFIRMED = SmtpReply(
    550, "5.7.1",
    "Nothing was published: the reply did not begin with the word PUBLISH; reply to the confirmation email again "
    "with PUBLISH as its first word",
    notice=None,
)
ANNOUNCEMENT_CHANGED = SmtpReply(
    550, "5.7.1", "The announcement is no longer what the confirmation email showed; send it again", notice=None
)

# --- joining, leaving, moderating: only the holder of the token can act, so nothing here is answered by mail ------
BAD_MEMBERSHIP_CONFIRMATION = SmtpReply(
    550, "5.1.1",
    "This confirmation address is not valid; reply to the confirmation email itself, without changing its address",
    notice=None,
)
MEMBERSHIP_CONFIRMATION_EXPIRED = SmtpReply(
    550, "5.1.1", "This confirmation has expired; write to the category's -join or -leave address again",
    notice=None,
)
MEMBERSHIP_CONFIRMATION_USED = SmtpReply(
    550, "5.7.1", "This confirmation was already used: a confirmation works once", notice=None
)
NOT_THE_REQUESTER = SmtpReply(
    550, "5.7.1", "Only the address the confirmation was sent to can confirm it; reply from that address",
    notice=None,
)
BAD_MODERATION_TOKEN = SmtpReply(
    550, "5.1.1", "This moderation address is not valid or has expired; use the CLI or a newer moderation email",
    notice=None,
)
NOT_A_MODERATOR = SmtpReply(
    550, "5.7.1", "Only a moderator of this category can decide on its held posts, from their registered address",
    notice=None,
)
NO_MODERATION_DECISION = SmtpReply(
    550, "5.7.1",
    "No decision found: reply with APPROVE, or REJECT followed by a reason, as the first word of your reply",
    notice=None,
)
ALREADY_DECIDED = SmtpReply(550, "5.7.1", "This post was already decided on by a moderator", notice=None)
# What to do, by enhanced status code, when a reply's text does not say it after a ';' (rejection notices).
ADVICE = {
    "5.1.1": "Check the address on the forum (each category has its own) and send your message again.",
    "5.3.4": "Send it again with fewer or smaller attachments, or put large files online and link to them.",
    "5.6.0": "Write your message above any quoted text and send it again.",
    "5.7.1": "Write from the address that follows this category, or join it first by writing to its -join address.",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A service's "no": the reply to give and the reason to record (which may name more than the reply says)."""

    reply: SmtpReply
    reason: str
