"""Fan-out: one message to many recipients, composed once and filled in per recipient.

The shared message is rendered and composed once with random placeholder tokens, and the composed bytes are
cut into fixed segments around its body parts (``MessagePrototype``). Per recipient only the tokens are
signed, the placeholders replaced in the header bytes, and the body parts (whose footers hold the reply
address and the unsubscribe links) re-encoded with their transfer encoding. Composing every message from
scratch costs about 2 ms; this costs a few tens of microseconds. A recipient whose address the byte template
cannot carry, or whose fill fails, is composed from scratch; one that compose refuses is skipped.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from markupsafe import escape

from qaflow_mail.mail.addresses import DOT_ATOM
from qaflow_mail.mail.compose import to_bytes

if TYPE_CHECKING:  # the outbox reads stored prototypes back: it imports this module
    from qaflow_mail.outbound.outbox import OutgoingMessage

# Recipients whose address the byte template can carry as is; anything else goes through compose().
_SIMPLE_ADDRESS_RE = re.compile(
    rf"{DOT_ATOM}@[A-Za-z0-9.-]+"
)
_MAX_ADDRESS_LENGTH = 320
_MAX_LINE = 998


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: int
    email: str


@dataclass(frozen=True, slots=True)
class RecipientTokens:
    reply: str  # "" for mail that invites no reply
    unsubscribe: str
    bounce: str


@dataclass(frozen=True, slots=True)
class Placeholders:
    """Random stand-ins for the per-recipient values; random so no post can contain them by accident or design."""

    recipient: str
    reply_token: str
    unsubscribe_token: str

    @classmethod
    def new(cls) -> Placeholders:
        nonce = secrets.token_hex(8)
        return cls(recipient=f"qfrcpt{nonce}@placeholder.invalid", reply_token=f"qfreply{nonce}",
                   unsubscribe_token=f"qfunsub{nonce}")

    def all(self) -> tuple[str, str, str]:
        return self.recipient, self.reply_token, self.unsubscribe_token


@dataclass(frozen=True, slots=True)
class _Body:
    cte: str  # its Content-Transfer-Encoding
    html: bool  # text/html: a value is HTML-escaped into it
    # Runs of lines: bytes encoded once (no placeholder in them), or a template of text pieces whose odd items
    # are placeholders. Quoted-printable and 7bit work line by line, so a run of lines encodes the same alone as
    # inside the whole body; base64 does not, and is one template.
    runs: tuple[bytes | tuple[str, ...], ...]

    @property
    def encode(self) -> Callable[[str], bytes]:
        return _ENCODERS[self.cte]

    @property
    def escape(self) -> Callable[[str], str]:
        return _escape_html if self.html else _as_is

    def fill_run(self, run: tuple[str, ...], values: Mapping[str, str]) -> bytes:
        """A templated run of lines with its placeholders' values, encoded."""
        return self.encode("".join(piece if position % 2 == 0 else self.escape(values[piece])
                                   for position, piece in enumerate(run)))


class MessagePrototype:
    """A composed message cut into pieces around its placeholders, to be filled in per recipient.

    The headers are bytes with the placeholders cut out; each body part is runs of lines encoded once, and the
    few lines that hold a placeholder, filled in and encoded per recipient.
    """

    def __init__(self, message: EmailMessage, placeholders: Placeholders | Collection[str]) -> None:
        self.placeholders = placeholders if isinstance(placeholders, Placeholders) else None
        names = placeholders.all() if isinstance(placeholders, Placeholders) else tuple(placeholders)
        if not names:
            raise ValueError("a prototype needs at least one placeholder")
        self._pattern = re.compile("|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)))
        self._byte_pattern = re.compile(self._pattern.pattern.encode("ascii"))
        leaves = [part for part in message.walk() if not part.is_multipart()]
        self._bodies: list[_Body] = []
        markers: list[bytes] = []
        nonce = secrets.token_hex(8)
        for index, leaf in enumerate(leaves):
            cte = str(leaf.get("Content-Transfer-Encoding", "7bit")).strip().lower()
            content = leaf.get_content()
            if not isinstance(content, str) or cte not in _ENCODERS:
                raise ValueError(f"cannot template a {leaf.get_content_type()} part in {cte}")
            self._bodies.append(_Body(cte=cte, html=leaf.get_content_type() == "text/html",
                                      runs=self._runs(content.replace("\r\n", "\n"), cte)))
            marker = f"qfpart{nonce}x{index}"
            leaf.set_payload(marker)
            markers.append(marker.encode("ascii"))
        data = to_bytes(message)
        segments: list[tuple[bytes, ...]] = []
        for marker_bytes in markers:
            head, found, data = data.partition(marker_bytes)
            if not found or marker_bytes in data:
                raise ValueError("body marker not found exactly once")
            segments.append(_cut(self._byte_pattern, head))
        segments.append(_cut(self._byte_pattern, data))
        self._segments = segments
        self._in_headers = {piece.decode("ascii") for segment in segments for piece in segment[1::2]}

    def _runs(self, text: str, cte: str) -> tuple[bytes | tuple[str, ...], ...]:
        if cte == "base64":
            return (_cut(self._pattern, text),)
        encode = _ENCODERS[cte]
        runs: list[bytes | tuple[str, ...]] = []
        run: list[str] = []
        run_has_placeholder = False
        for line in _lines(text):
            has_placeholder = self._pattern.search(line) is not None
            if run and has_placeholder != run_has_placeholder:
                joined = "".join(run)
                runs.append(_cut(self._pattern, joined) if run_has_placeholder else encode(joined))
                run = []
            run.append(line)
            run_has_placeholder = has_placeholder
        if run:
            joined = "".join(run)
            runs.append(_cut(self._pattern, joined) if run_has_placeholder else encode(joined))
        return tuple(runs)

    def fill_values(self, values: Mapping[str, str]) -> bytes:
        """The message with each placeholder replaced by its value; ValueError when a value cannot be carried
        (a header value that is not ASCII, a 7bit part that would no longer be 7bit)."""
        in_headers = {name.encode("ascii"): values[name].encode("ascii") for name in self._in_headers}
        out: list[bytes] = []
        for index, segment in enumerate(self._segments):
            out += [piece if position % 2 == 0 else in_headers[piece] for position, piece in enumerate(segment)]
            if index < len(self._bodies):
                body = self._bodies[index]
                out += [run if isinstance(run, bytes) else body.fill_run(run, values) for run in body.runs]
        return b"".join(out)

    def check_values(self, values: Mapping[str, str]) -> None:
        """Raise the ValueError `fill_values` would raise for `values`, without filling the message in."""
        for name in self._in_headers:
            values[name].encode("ascii")
        for body in self._bodies:
            if body.cte == "7bit":  # the only encoding that can refuse a value
                for run in body.runs:
                    if not isinstance(run, bytes):
                        body.fill_run(run, values)

    def stored(self) -> bytes:
        """This prototype as bytes to keep (`from_stored` reads them back): JSON, bytes spelled as Latin-1 text."""
        document = {
            "segments": [[piece.decode("latin-1") for piece in segment] for segment in self._segments],
            "bodies": [{"cte": body.cte, "html": body.html,
                        "runs": [{"bytes": run.decode("latin-1")} if isinstance(run, bytes) else list(run)
                                 for run in body.runs]} for body in self._bodies],
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_stored(cls, data: bytes) -> MessagePrototype:
        """A prototype that `stored` wrote, ready for `fill_values`; ValueError when `data` is not one."""
        try:
            document = json.loads(data)
            segments = [tuple(piece.encode("latin-1") for piece in segment) for segment in document["segments"]]
            bodies = [_Body(cte=body["cte"], html=bool(body["html"]), runs=tuple(_stored_run(run) for run in
                                                                                 body["runs"]))
                      for body in document["bodies"]]
        except (KeyError, TypeError, AttributeError, UnicodeError, json.JSONDecodeError) as error:
            raise ValueError(f"not a stored prototype: {error}") from error
        if len(segments) != len(bodies) + 1 or any(body.cte not in _ENCODERS for body in bodies):
            raise ValueError("not a stored prototype: its parts do not match")
        prototype = cls.__new__(cls)
        prototype.placeholders = None
        prototype._segments = segments
        prototype._bodies = bodies
        prototype._in_headers = {piece.decode("ascii") for segment in segments for piece in segment[1::2]}
        return prototype

    def fill(self, *, recipient: str, reply_token: str, unsubscribe_token: str) -> bytes:
        ph = self.placeholders
        if ph is None:
            raise TypeError("this prototype has named placeholders: fill it with fill_values")
        return self.fill_values({ph.recipient: recipient, ph.reply_token: reply_token,
                                 ph.unsubscribe_token: unsubscribe_token})


AnyStr = TypeVar("AnyStr", str, bytes)


def _stored_run(run: Any) -> bytes | tuple[str, ...]:
    if isinstance(run, dict):
        return str(run["bytes"]).encode("latin-1")
    return tuple(str(piece) for piece in run)


def _cut(pattern: re.Pattern[AnyStr], data: AnyStr) -> tuple[AnyStr, ...]:
    """`data` cut around the matches of `pattern`: literal pieces at even indexes, the matches at odd ones."""
    pieces: list[AnyStr] = []
    last = 0
    for found in pattern.finditer(data):
        pieces += [data[last : found.start()], found.group()]
        last = found.end()
    pieces.append(data[last:])
    return tuple(pieces)


def _lines(text: str) -> list[str]:
    """The lines of `text`, each with its "\\n" (the last one without, when the text does not end with one)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


_HTML_SPECIAL_RE = re.compile(r"[&<>\"']")


def _escape_html(value: str) -> str:
    return str(escape(value)) if _HTML_SPECIAL_RE.search(value) else value


def _as_is(value: str) -> str:
    return value


def _encode_7bit(text: str) -> bytes:
    data = text.encode("utf-8")
    if not data.isascii() or any(len(line) > _MAX_LINE for line in data.split(b"\n")):
        raise ValueError("a 7bit body must stay ASCII with short lines")
    return data.replace(b"\n", b"\r\n")


def _encode_qp(text: str) -> bytes:
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def _encode_base64(text: str) -> bytes:
    # Text inside base64 is in canonical form (RFC 2045 6.8): CRLF line breaks, as the email package writes it.
    return base64.encodebytes(text.replace("\n", "\r\n").encode("utf-8")).replace(b"\n", b"\r\n")


_ENCODERS: dict[str, Callable[[str], bytes]] = {
    "7bit": _encode_7bit,
    "quoted-printable": _encode_qp,
    "base64": _encode_base64,
}


def simple_address(address: str) -> bool:
    """Whether the byte template can carry `address` as is."""
    return len(address) <= _MAX_ADDRESS_LENGTH and _SIMPLE_ADDRESS_RE.fullmatch(address) is not None


class Fanout(Protocol):
    """One message to many recipients: what differs per recipient, on top of what all of them share."""

    @property
    def placeholders(self) -> Placeholders: ...

    def compose_for(self, recipient: str, *, reply_token: str, unsubscribe_token: str) -> EmailMessage:
        """The full message for one recipient, composed from scratch (the reference the prototype matches)."""
        ...

    def tokens_for(self, recipient: Recipient) -> RecipientTokens: ...

    def outgoing(self, recipient: Recipient, raw: bytes, tokens: RecipientTokens) -> OutgoingMessage: ...

    def skipped(self, recipient: Recipient, reason: ValueError) -> None:
        """Called for a recipient whose address compose refuses; the others still go."""
        ...


def prototype_of(fanout: Fanout) -> MessagePrototype:
    """The shared message composed once with the placeholders; ValueError if it cannot be templated."""
    ph = fanout.placeholders
    message = fanout.compose_for(ph.recipient, reply_token=ph.reply_token, unsubscribe_token=ph.unsubscribe_token)
    return MessagePrototype(message, ph)


def fan_out(
    fanout: Fanout, prototype: MessagePrototype | None, recipients: Iterable[Recipient]
) -> list[OutgoingMessage]:
    """One outbox message per recipient: the prototype filled in where it can be, else composed from scratch."""
    out: list[OutgoingMessage] = []
    for rcpt in recipients:
        tokens = fanout.tokens_for(rcpt)
        raw: bytes | None = None
        if prototype is not None and simple_address(rcpt.email):
            try:
                raw = prototype.fill(recipient=rcpt.email, reply_token=tokens.reply,
                                     unsubscribe_token=tokens.unsubscribe)
            except ValueError:
                raw = None  # e.g. a 7bit line grown past 998 octets: compose picks another encoding
        if raw is None:
            try:
                raw = to_bytes(fanout.compose_for(rcpt.email, reply_token=tokens.reply,
                                                  unsubscribe_token=tokens.unsubscribe))
            except ValueError as exc:  # an address our mail cannot carry (compose says why)
                fanout.skipped(rcpt, exc)
                continue
        out.append(fanout.outgoing(rcpt, raw, tokens))
    return out
