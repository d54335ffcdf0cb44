"""The words people use to leave a list ("unsubscribe", "stop", "remove me", in a few languages), owned here for
both command readers: a reply whose whole text is such a command is applied instead of being posted
(``reply_command``), and a <slug>-request@ line that says it is a ``leave`` (``is_leave_phrase``, used by
mail.request_commands). Pure.

Only a short text that is nothing but the command (give or take "please", "me", punctuation and a greeting's
worth of politeness) counts: "How do I stop the daemon?" is a question, never a command.
"""

from __future__ import annotations

import re
from enum import StrEnum


class ReplyCommand(StrEnum):
    UNSUBSCRIBE = "unsubscribe"


# The phrases people write to leave a list, by language (mail clients' and list managers' own wording).
_UNSUBSCRIBE_PHRASES = (
    # en
    "unsubscribe", "unsubscribe me", "unsub", "stop", "remove me", "remove", "remove me from this list",
    "remove me from the list", "take me off this list", "take me off the list", "opt out", "optout",
    "signoff", "sign off",
    # de
    "abmelden", "abbestellen", "austragen", "bitte abmelden", "bitte austragen", "abmeldung",
    # fr
    "désabonner", "désabonnement", "se désabonner", "désinscrire", "désinscription", "me désabonner",
    "me désinscrire",
    # es
    "baja", "darme de baja", "dar de baja", "cancelar suscripción", "anular suscripción", "desuscribir",
    # it
    "cancellami", "disiscrivimi", "annulla iscrizione", "cancella iscrizione", "disiscriviti",
    # pt
    "descadastrar", "cancelar inscrição", "cancelar assinatura",
    # nl
    "afmelden", "uitschrijven", "schrijf me uit",
    # sv / da / no
    "avregistrera", "avsluta prenumeration", "afmeld", "meld af", "avmeld", "avslutt",
)
_POLITE = (
    r"(?:please|pls|plz|bitte|s'il vous plaît|svp|por favor|per favore|alstublieft|aub"
    r"|thanks|thank you|danke|merci|gracias|grazie|obrigad[oa])"
)
_UNSUBSCRIBE_RE = re.compile(
    rf"^(?:{_POLITE}[\s,]*)?(?:{'|'.join(re.escape(p) for p in sorted(_UNSUBSCRIBE_PHRASES, key=len, reverse=True))})"
    rf"(?:[\s,]*{_POLITE})?$",
    re.IGNORECASE,
)
_MAX_COMMAND_CHARS = 80
_NOISE_RE = re.compile(r"[\s.!¡?¿:;,…\-–—\"'“”«»()]+")


def _normalised(text: str) -> str:
    return _NOISE_RE.sub(" ", text).strip()


def is_leave_phrase(line: str) -> bool:
    """Whether one line says nothing but "let me leave", in any of the languages above."""
    candidate = line.strip()
    return 0 < len(candidate) <= _MAX_COMMAND_CHARS and _UNSUBSCRIBE_RE.match(_normalised(candidate)) is not None


def reply_command(text: str) -> ReplyCommand | None:
    """The command a reply's visible text is, or None. The subject never counts: a topic may be called "Stop"."""
    candidate = text.strip()
    if "\n\n" in candidate:
        return None
    return ReplyCommand.UNSUBSCRIBE if is_leave_phrase(candidate) else None
