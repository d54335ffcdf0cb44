"""Commands mailed to <slug>-request@ (and the mode a <slug>-join@ mail names), read from the Subject and the
first body lines. Pure.

A mail may carry several commands, one a line; reading stops at the first line that is not a command, at a
signature separator or at quoted text, so a reply's quote or a signature is never taken for a command. Words
Mailman users know are accepted too (subscribe, digest, info), and every way of saying "leave" that a reply may
use (unsubscribe, stop, remove me, abmelden, …: mail.commands owns those words).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from qaflow_mail.mail.commands import is_leave_phrase

MAX_COMMANDS = 10  # more than this in one mail is not a person managing their subscription


class Verb(StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    MODE = "mode"
    NOTIFY = "notify"
    STATUS = "status"
    HELP = "help"


JOIN_MODES = ("each", "daily", "weekly")
MODES = ("each", "daily", "weekly", "mute")
NOTIFY_CHOICES = ("all", "direct", "off")

_VERBS = {verb.value: verb for verb in Verb}
_ALIASES = {"subscribe": Verb.JOIN, "digest": Verb.MODE, "info": Verb.STATUS}  # leaving: is_leave_phrase
_SIGNATURE_RE = re.compile(r"^(?:--|-- |__+)\s*$")
_REPLY_PREFIX_RE = re.compile(r"^\s*(?:(?:re|aw|sv|fwd?|wg)\s*:\s*)+", re.IGNORECASE)
_TRAILING_PUNCTUATION = ".!;,"


@dataclass(frozen=True, slots=True)
class Command:
    verb: Verb
    argument: str | None  # the mode or notify choice; None where the verb takes none or it was left out
    line: str  # as written, for the answer
    error: str = ""  # why it cannot be done as written ("" when fine)


def _words(line: str) -> list[str]:
    return [word.strip(_TRAILING_PUNCTUATION).lower() for word in line.split()]


def parse_line(line: str) -> Command | None:
    """The command one line spells, or None when the line is not a command."""
    text = line.strip()
    words = _words(text)
    if not words:
        return None
    verb = _ALIASES.get(words[0]) or _VERBS.get(words[0])
    if verb is None and is_leave_phrase(text):
        return Command(Verb.LEAVE, None, text)
    if verb is None or len(words) > 2:
        return None
    argument = words[1] if len(words) == 2 else None
    if words[0] == "digest" and argument == "off":
        argument = "each"
    if verb is Verb.JOIN:
        if argument is not None and argument not in JOIN_MODES:
            return Command(verb, argument, text, f"unknown mode {argument!r}: use each, daily or weekly")
    elif verb is Verb.MODE:
        if argument not in MODES:
            return Command(verb, argument, text, "say which mode: each, daily, weekly or mute")
    elif verb is Verb.NOTIFY:
        if argument not in NOTIFY_CHOICES:
            return Command(verb, argument, text, "say which replies: all, direct or off")
    elif argument is not None:
        return None  # "help me with my printer" is not a command
    return Command(verb, argument, text)


def strip_reply_prefix(subject: str) -> str:
    return _REPLY_PREFIX_RE.sub("", subject).strip()


def parse_commands(subject: str, body: str) -> tuple[Command, ...]:
    """The commands of one mail: the Subject's (when it is a valid one), then each body line until the first
    that is not a command. Blank lines before and between commands are skipped."""
    found: list[Command] = []
    from_subject = parse_line(strip_reply_prefix(subject))
    if from_subject is not None and not from_subject.error:
        found.append(from_subject)
    for raw_line in body.replace("\r\n", "\n").split("\n"):
        line = raw_line.rstrip()
        if not line.strip():
            continue
        if _SIGNATURE_RE.match(line) or line.lstrip().startswith(">"):
            break
        command = parse_line(line)
        if command is None:
            break
        if len(found) == 1 and from_subject is not None and (command.verb, command.argument) == (
                from_subject.verb, from_subject.argument):
            continue  # "join" in the Subject and again as the first line is one command
        found.append(command)
        if len(found) >= MAX_COMMANDS:
            break
    return tuple(found)


def join_mode(subject: str, body: str) -> str | None:
    """The mode a mail to <slug>-join@ names in its Subject or first body line (each, daily, weekly), or None.

    "daily", "join daily" and "subscribe daily" all name it; anything else leaves the category's default."""
    first_line = next((line for line in body.replace("\r\n", "\n").split("\n") if line.strip()), "")
    for text in (strip_reply_prefix(subject), first_line):
        words = _words(text)
        if len(words) == 1 and words[0] in JOIN_MODES:
            return words[0]
        command = parse_line(text)
        if command is not None and command.verb is Verb.JOIN and not command.error and command.argument:
            return command.argument
    return None
