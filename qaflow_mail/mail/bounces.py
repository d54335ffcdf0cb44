"""Reading bounces: RFC 3464 delivery-status reports first, flufl.bounce's detectors for the rest. Pure.

A message counts as a bounce when it carries a delivery-status report or Exim's X-Failed-Recipients, or
when something says an automaton sent it (a mailer-daemon sender, a null sender, a bounce subject, or
arrival on our bounce address) *and* its content agrees (flufl.bounce finds failed recipients, a
returned original is attached, or a second such sign holds).  flufl.bounce's heuristics alone are not
enough: they also fire on ordinary replies that merely quote a recipient list.
"""

from __future__ import annotations

import email
import email.header
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

log = logging.getLogger(__name__)

_DIAGNOSTIC_LIMIT = 300

# Subjects that mail servers give to non-delivery reports and delay warnings, matched at the start.
_BOUNCE_SUBJECT_RE = re.compile(
    r"""^(?:
        undeliver(?:ed|able)
      | non[-\s]?deliver(?:ed|able|y)
      | nondeliverable
      | returned\ mail
      | mail\ returned
      | failure\ notice
      | delivery\ (?:status\ notification|notification|report|failure|failed|has\ failed|problem|delayed)
      | delivery\ final\ failure
      | (?:mail|message)\ (?:delivery\ )?(?:failed|failure|delayed|not\ delivered|could\ not\ be\ delivered)
      | (?:mail|message)\ (?:could\ not|cannot|can't)\ be\ delivered
      | could\ not\ send\ message
      | warning:\ could\ not\ send\ message
      | delayed\ mail
      | (?:mail\ )?delivery\ warning
      | warning:\ (?:message|mail|delivery)
      | mail\ system\ error
      | mail\ error\b
      | message\ status\ -\ undeliverable
      | ndn:
      | unzustellbar | nicht\ zustellbar | unzustellbare
      | non\ remis | échec\ de\ (?:la\ )?(?:remise|distribution) | message\ non\ délivré
      | non\ recapitabile | impossibile\ recapitare
      | no\ se\ puede\ entregar | no\ entregado | mensaje\ no\ entregado
      | onbestelbaar | niet\ bezorgd
      | não\ (?:é\ possível\ )?entregue | não\ entregue | impossível\ entregar
      | olevererbart | kan\ ikke\ leveres | kunne\ ikke\ leveres
      | nie\ można\ dostarczyć | niedostarczalne
      | невозможно\ доставить | не\ доставлено | недоставленное
      | 配信不能 | 配送不能 | 无法送达 | 無法傳遞 | 无法投递 | 退信
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_BOUNCE_SUBJECT_SUFFIX_RE = re.compile(
    r"[:(\[-]\s*(?:undeliverable|undelivered|delivery failed|delivery failure|not delivered|non remis"
    r"|unzustellbar|nicht zustellbar|returned mail)\s*[)\]]?\s*$",
    re.IGNORECASE,
)
_REPLY_OR_FORWARD_RE = re.compile(
    r"^(?:re|aw|sv|vs|antw|odp|ynt|fw|fwd|wg|tr|rv|enc|doorst)\s*(?:\[\d+\])?\s*[:：]", re.IGNORECASE
)
_LEADING_TAGS_RE = re.compile(r"^\s*(?:\[[^\]]{0,60}\]\s*)+")

_DAEMON_LOCAL_RE = re.compile(
    r"^(?:mailer[-_]?daemon|mail[-_]?daemon|post[-_]?master|mail[-_]?delivery[-_]?(?:system|subsystem)"
    r"|microsoftexchange[0-9a-f]*|mdaemon|mmdf|smtp[-_]?daemon)(?:[-+.].*)?$",
    re.IGNORECASE,
)
_DAEMON_NAME_RE = re.compile(
    r"\b(?:mail\s+delivery\s+(?:system|subsystem|service)|mail\s+(?:system\s+)?administrator"
    r"|delivery\s+status\s+notification)\b",
    re.IGNORECASE,
)
# MAILER-DAEMON or postmaster as a word of their own anywhere in From, even in addresses too broken to
# parse (`<Postmaster\@example.com@relay>`), but not inside a longer local part (`john.postmaster@`).
_DAEMON_WORD_RE = re.compile(
    r"(?:^|[\s<\"'(,])(?:mailer[-_]?daemon|mail[-_]?daemon|post[-_]?master)(?=[@\\\s>\"'),]|$)",
    re.IGNORECASE,
)

_ENHANCED_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_REPLY_RE = re.compile(r"\b[45]\d\d[ -]")

_VERP_LOCAL_RE = re.compile(r"bounces\+(?P<token>[A-Za-z0-9_-]+)", re.IGNORECASE)

_DELIVERY_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_RETURNED_ORIGINAL_TYPES = frozenset(
    {"message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers"}
)


@dataclass(frozen=True, slots=True)
class BounceReport:
    """Failed recipients (lowercased) of one bounce; `diagnostic` is a one-line reason for people."""

    permanent: frozenset[str]
    temporary: frozenset[str]
    diagnostic: str

    @property
    def addresses(self) -> frozenset[str]:
        return self.permanent | self.temporary


@dataclass(frozen=True, slots=True)
class BounceFinding:
    """A bounce together with the sign that made us call it one (for logs and verdicts)."""

    report: BounceReport
    evidence: str


@dataclass(frozen=True, slots=True)
class _Recipient:
    address: str
    permanent: bool
    diagnostic: str


def read_bounce(raw: bytes, *, null_sender: bool = False, to_bounce_address: bool = False) -> BounceReport | None:
    """The failed recipients of a bounce, or None when `raw` is not a bounce.

    `null_sender` (the envelope sender was <>) and `to_bounce_address` (it arrived on our VERP address)
    are extra signs a caller with an envelope can give.
    """
    finding = find_bounce(raw, null_sender=null_sender, to_bounce_address=to_bounce_address)
    return finding.report if finding is not None else None


def find_bounce(raw: bytes, *, null_sender: bool = False, to_bounce_address: bool = False) -> BounceFinding | None:
    """Like `read_bounce`, with the sign that made it a bounce."""
    if _no_bounce_sign(raw, null_sender=null_sender, to_bounce_address=to_bounce_address):
        return None
    # flufl.bounce's detectors are written against the compat32 Message API.
    msg = email.message_from_bytes(raw)
    subject = header_text(msg, "Subject")
    status_parts = list(_delivery_status_parts(msg))
    dsn_recipients = [r for part in status_parts for r in _dsn_recipients(part)]

    automaton_signs: list[str] = []
    if is_daemon_sender(header_text(msg, "From")):
        automaton_signs.append("mailer-daemon sender")
    if null_sender or _null_return_path(msg):
        automaton_signs.append("null sender")
    if is_bounce_subject(subject):
        automaton_signs.append("bounce subject")
    if to_bounce_address:
        automaton_signs.append("sent to the bounce address")

    evidence: str | None = None
    if status_parts or _is_delivery_report(msg):
        evidence = "delivery-status report"
    elif msg.get_all("X-Failed-Recipients"):
        evidence = "X-Failed-Recipients header"

    temporary: frozenset[str] = frozenset()
    permanent: frozenset[str] = frozenset()
    if evidence is not None or automaton_signs:
        temporary, permanent = _flufl_failures(msg)
    if evidence is None and automaton_signs:
        if temporary or permanent:
            evidence = f"{automaton_signs[0]} and failed recipients found"
        elif len(automaton_signs) >= 2 and "bounce subject" in automaton_signs:
            evidence = " and ".join(automaton_signs)
        elif "bounce subject" in automaton_signs and _has_returned_original(msg):
            evidence = "bounce subject with the returned message attached"
    if evidence is None:
        return None

    temporary, permanent = _merge(dsn_recipients, temporary, permanent, _exim_failed_recipients(msg))
    diagnostic = _first_diagnostic(dsn_recipients) or _text_diagnostic(msg) or subject
    report = BounceReport(permanent, temporary, _one_line(diagnostic)[:_DIAGNOSTIC_LIMIT])
    return BounceFinding(report=report, evidence=evidence)


def verp_token(recipient: str, *, domain: str) -> str | None:
    """The token of a VERP bounce address "bounces+<token>@<domain>", or None for any other address."""
    address = recipient.strip().strip("<>").strip()
    local, at, host = address.rpartition("@")
    if not at or host.lower().rstrip(".") != domain.lower().rstrip("."):
        return None
    match = _VERP_LOCAL_RE.fullmatch(local)
    return match.group("token") if match else None


_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
_DELIVERY_STATUS_RE = re.compile(rb"delivery-status", re.IGNORECASE)


def _no_bounce_sign(raw: bytes, *, null_sender: bool, to_bounce_address: bool) -> bool:
    """True when nothing `find_bounce` acts on is there: no delivery-status part or report type anywhere, and no
    sign in the top-level header block. Read from the header block and one scan of the bytes, so ordinary mail
    (a 25 MB one too) is not parsed a second time just to learn it is no bounce."""
    if null_sender or to_bounce_address or _DELIVERY_STATUS_RE.search(raw):
        return False
    end = _HEAD_END_RE.search(raw)
    head = email.message_from_bytes(raw[: end.end()] if end else raw)
    return not (head.get_all("X-Failed-Recipients") or is_daemon_sender(header_text(head, "From"))
                or _null_return_path(head) or is_bounce_subject(header_text(head, "Subject")))


def is_bounce_subject(subject: str) -> bool:
    """True for the subjects MTAs give non-delivery reports; replies and forwards of them do not count.

    Some MTAs append their verdict to the original subject instead ("RE: … : non remis (delivery
    failed)"), so a verdict at the very end counts as well.
    """
    text = _LEADING_TAGS_RE.sub("", subject).strip()
    if not text:
        return False
    if _BOUNCE_SUBJECT_SUFFIX_RE.search(text):
        return True
    return not _REPLY_OR_FORWARD_RE.match(text) and _BOUNCE_SUBJECT_RE.match(text) is not None


def is_daemon_sender(from_header: str) -> bool:
    """True when a From header names a mail system rather than a person (MAILER-DAEMON, postmaster, <>)."""
    text = from_header.strip()
    if not text:
        return False
    if _DAEMON_NAME_RE.search(text) or _DAEMON_WORD_RE.search(text):
        return True
    for _, address in getaddresses([text]):
        local = address.rpartition("@")[0] if "@" in address else address
        if local and _DAEMON_LOCAL_RE.match(local):
            return True
    # `"Mail System" <>`: a From with an empty address is what some MTAs put on their reports.
    return re.search(r"<\s*>", text) is not None


def header_text(msg: Message, name: str) -> str:
    """A compat32 header decoded to one line of text ("" when absent or undecodable)."""
    try:
        value = msg.get(name)
    except Exception:  # a header the compat32 parser keeps but cannot return
        return ""
    if value is None:
        return ""
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except Exception:  # broken encoded-words: keep the raw text
        text = str(value)
    return _one_line(text)


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _null_return_path(msg: Message) -> bool:
    values = msg.get_all("Return-Path") or []
    if not values:
        return False
    value = str(values[0]).strip().lower()
    return value in {"<>", "", "<mailer-daemon>", "mailer-daemon"}


def _walk_outer(msg: Message) -> Iterator[Message]:
    """Every part of `msg`, without descending into attached messages (a forwarded bounce is not one)."""
    yield msg
    if msg.get_content_type() in _RETURNED_ORIGINAL_TYPES:
        return
    payload = msg.get_payload()
    if isinstance(payload, list):
        for part in payload:
            if isinstance(part, Message):
                yield from _walk_outer(part)


def _delivery_status_parts(msg: Message) -> Iterator[Message]:
    for part in _walk_outer(msg):
        if part.get_content_type() in _DELIVERY_STATUS_TYPES:
            yield part


def _is_delivery_report(msg: Message) -> bool:
    if msg.get_content_type() != "multipart/report":
        return False
    report_type = msg.get_param("report-type")
    return isinstance(report_type, str) and report_type.strip().lower() in {
        "delivery-status",
        "global-delivery-status",
    }


def _has_returned_original(msg: Message) -> bool:
    return any(part.get_content_type() in _RETURNED_ORIGINAL_TYPES for part in _walk_outer(msg))


def _status_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part: per-message fields first, then one per recipient."""
    payload = part.get_payload()
    if part.get_content_type() == "message/delivery-status" and isinstance(payload, list):
        # The compat32 parser splits message/delivery-status into its blocks itself.
        return [block for block in payload if isinstance(block, Message)]
    if isinstance(payload, list):
        # message/global-delivery-status (RFC 6533) is parsed as one message: its headers are the first
        # block and its body holds the rest, UTF-8 bytes included.
        text = "".join(_message_text(block) for block in payload if isinstance(block, Message))
    else:
        decoded = part.get_payload(decode=True)
        text = decoded.decode("utf-8", errors="replace") if isinstance(decoded, bytes) else str(payload)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [email.message_from_string(block.strip() + "\n\n") for block in blocks if block.strip()]


def _message_text(msg: Message) -> str:
    try:
        return msg.as_bytes().decode("utf-8", errors="replace")
    except Exception:  # a part the generator cannot write back: its text form will do
        return msg.as_string()


def _typed_address(value: str) -> str:
    """`rfc822; user@example.com` (or `utf-8; …`) to the bare address; "" for other address types."""
    kind, sep, address = value.partition(";")
    if not sep:
        address = kind
    elif kind.strip().lower() not in {"rfc822", "utf-8", "x-unknown"}:
        return ""
    address = address.strip()
    if address.startswith("<") and ">" in address:
        address = address[1 : address.index(">")]
    address = parseaddr(address)[1] or address
    return address.strip().lower() if "@" in address else ""


def _dsn_recipients(part: Message) -> list[_Recipient]:
    recipients: list[_Recipient] = []
    blocks = _status_blocks(part)
    # The first block holds the per-message fields; a report squeezed into one block is read whole.
    for block in blocks[1:] or blocks:
        action = header_text(block, "Action").lower()
        status_match = _ENHANCED_STATUS_RE.search(header_text(block, "Status"))
        status_class = status_match.group(1) if status_match else ""
        if status_class == "2" or action.startswith(("delivered", "relayed", "expanded")):
            continue
        # The status class decides (a "failed" 4.x.x is a transient failure the MTA gave up on, a
        # soft bounce); the action only when there is no usable status.
        if status_class == "5":
            permanent = True
        elif status_class == "4" or action.startswith("delayed"):
            permanent = False
        elif action.startswith(("failed", "error")):
            permanent = True
        else:
            continue
        address = ""
        for field in ("Original-Recipient", "Final-Recipient", "X-Actual-Recipient"):
            address = _typed_address(header_text(block, field))
            if address:
                break
        if not address:
            continue
        code = status_match.group(0) if status_match else ""
        detail = header_text(block, "Diagnostic-Code")
        kind, sep, rest = detail.partition(";")
        if sep and " " not in kind.strip():
            detail = rest.strip()
        diagnostic = detail if code and code in detail else " ".join(x for x in (code, detail) if x)
        recipients.append(_Recipient(address, permanent, diagnostic))
    return recipients


def _flufl_failures(msg: Message) -> tuple[frozenset[str], frozenset[str]]:
    """flufl.bounce's (temporary, permanent) recipients, lowercased; nothing when a detector trips."""
    try:
        temporary, permanent = all_failures(_for_flufl(msg))
    except Exception:  # a heuristic detector tripping over odd input must not lose the mail
        log.debug("flufl.bounce failed on this message", exc_info=True)
        return frozenset(), frozenset()
    return _decode_addresses(temporary), _decode_addresses(permanent)


def _for_flufl(msg: Message) -> Message:
    """`msg` with the headers flufl.bounce reads as plain, parseable strings.

    Some detectors call str methods on headers the compat32 parser returns as Header objects (8-bit
    bytes), and the Yale detector indexes getaddresses() of From, which is empty for a missing or
    unparseable From on current Pythons; either would stop the whole detector chain.
    """
    from_text = header_text(msg, "From")
    if not getaddresses([from_text]) or not parseaddr(from_text)[1]:
        from_text = "unknown@invalid"
    mailer = header_text(msg, "X-Mailer")
    del msg["From"]
    msg["From"] = from_text
    if "X-Mailer" in msg:
        del msg["X-Mailer"]
        msg["X-Mailer"] = mailer
    return msg


def _decode_addresses(found: frozenset[bytes]) -> frozenset[str]:
    """flufl.bounce's byte addresses as lowercased text, without the odd non-address it reports."""
    addresses: set[str] = set()
    for item in found:
        text = item.decode("ascii", errors="replace").strip().strip("<>").strip().lower()
        local, at, domain = text.rpartition("@")
        if at and local and domain and not any(c.isspace() for c in text):
            addresses.add(text)
    return frozenset(addresses)


def _exim_failed_recipients(msg: Message) -> frozenset[str]:
    values = [str(v) for v in msg.get_all("X-Failed-Recipients") or []]
    return frozenset(address.lower() for _, address in getaddresses(values) if "@" in address)


def _merge(
    dsn: list[_Recipient],
    flufl_temporary: frozenset[str],
    flufl_permanent: frozenset[str],
    exim_failed: frozenset[str],
) -> tuple[frozenset[str], frozenset[str]]:
    """(temporary, permanent): the DSN's own status codes decide for the addresses it names."""
    permanent = {r.address for r in dsn if r.permanent}
    temporary = {r.address for r in dsn if not r.permanent}
    seen = permanent | temporary
    permanent |= {a for a in flufl_permanent | exim_failed if a not in seen}
    temporary |= {a for a in flufl_temporary if a not in seen}
    temporary -= permanent
    return frozenset(temporary), frozenset(permanent)


def _first_diagnostic(dsn: list[_Recipient]) -> str:
    for recipient in sorted(dsn, key=lambda r: not r.permanent):
        if recipient.diagnostic:
            return recipient.diagnostic
    return ""


def _text_diagnostic(msg: Message) -> str:
    """The first line of the human-readable report that carries an SMTP reply or status code."""
    for part in _walk_outer(msg):
        if part.get_content_type() != "text/plain" or part.get_filename():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:
            text = payload.decode("utf-8", errors="replace")
        for line in text.splitlines()[:200]:
            stripped = line.strip()
            if _ENHANCED_STATUS_RE.search(stripped) or _SMTP_REPLY_RE.search(stripped):
                return stripped
    return ""


def failed_address(report: BounceReport, user_email: str) -> str:
    """The address to record: the user's own when the report names it, else the one the report names first."""
    own = user_email.lower()
    if own in report.addresses:
        return own
    ranked = sorted(report.permanent) or sorted(report.temporary)
    return ranked[0] if ranked else own
