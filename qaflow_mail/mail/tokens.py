"""Stateless signed tokens carried in address local parts (reply+, unsubscribe+, bounces+, confirm+). Pure.

Layout before base32: one byte ``version << 4 | kind``, one unsigned LEB128 varint per id, a varint for the
issue day (days since 2020-01-01), then the first ``MAC_BYTES`` of HMAC-SHA256 over all of that. The result
is base32, lowercase, unpadded, so it survives the lowercasing that some MTAs apply to local parts.
With ids up to 2**40 a token is at most 44 characters, so even ``unsubscribe+<token>`` fits the
64-octet local-part limit of RFC 5321.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from functools import lru_cache

EPOCH = date(2020, 1, 1)
MAC_BYTES = 10
MAX_ID = 2**63 - 1
MAX_TOKEN_CHARS = 64
# Tokens minted by a host whose clock runs a little ahead (or in an earlier time zone) are still fine.
FUTURE_SKEW_DAYS = 1

_VERSION = 1
_MAC_CONTEXT = b"qaflow-mail token v1\x00"
_BASE32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_MAX_VARINT_BYTES = 9  # 63 bits


class TokenKind(StrEnum):
    REPLY = "reply"  # ids: (post id, user id)
    UNSUBSCRIBE = "unsubscribe"  # ids: (user id, category id[, generation]), category 0 = "all announcements"
    BOUNCE = "bounce"  # ids: (user id, outbox id), VERP envelope sender
    CONFIRM = "confirm"  # ids: (announcement id, user id); the caller enforces single use
    DIGEST = "digest"  # ids: (user id, 1 daily | 2 weekly[, generation]): stops that whole digest
    JOIN = "join"  # ids: (confirmation request id, 0): confirms a join or leave asked for by mail; single use
    MODERATE = "moderate"  # ids: (held post id, moderator user id)


# The ids tokens carry, where a number stands for something that is not a row:
# an UNSUBSCRIBE token is (user id, category id), and this category id means "site announcements";
ANNOUNCEMENTS_CATEGORY_ID = 0
# a DIGEST token is (user id, digest code): which digest it stops.
DIGEST_CODES: dict[str, int] = {"daily": 1, "weekly": 2}


class TokenError(StrEnum):
    TAMPERED = "tampered"
    EXPIRED = "expired"
    MALFORMED = "malformed"
    WRONG_KIND = "wrong kind"


_KIND_CODES: dict[TokenKind, int] = {
    TokenKind.REPLY: 1,
    TokenKind.UNSUBSCRIBE: 2,
    TokenKind.BOUNCE: 3,
    TokenKind.CONFIRM: 4,
    TokenKind.DIGEST: 5,
    TokenKind.JOIN: 6,
    TokenKind.MODERATE: 7,
}
_KINDS_BY_CODE = {code: kind for kind, code in _KIND_CODES.items()}
_ID_COUNT: dict[TokenKind, int] = dict.fromkeys(TokenKind, 2)
# The kinds that stop mail (an UNSUBSCRIBE token, a digest's own DIGEST token) may carry a third id, the user's
# token generation: raising users.token_generation voids every earlier link. Such a token has its own kind code;
# a two-id token of the plain code reads as generation 0, so links minted before generations keep working.
_GENERATION_CODES: dict[TokenKind, int] = {TokenKind.UNSUBSCRIBE: 8, TokenKind.DIGEST: 9}
_KINDS_BY_CODE.update({code: kind for kind, code in _GENERATION_CODES.items()})


class InvalidToken(ValueError):
    """A token that must not be honoured; ``reason`` says why (never shown to the sender in detail)."""

    def __init__(self, reason: TokenError, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenPayload:
    kind: TokenKind
    ids: tuple[int, ...]
    issued: date
    key_index: int  # 0 for the current secret, 1 for the previous one, ...


def sign(kind: TokenKind, ids: tuple[int, ...], *, secret: str, issued: date) -> str:
    """The token for ``ids`` of ``kind``, issued on ``issued``."""
    if not secret:
        raise ValueError("token secret must not be empty")
    with_generation = kind in _GENERATION_CODES and len(ids) == _ID_COUNT[kind] + 1
    if len(ids) != _ID_COUNT[kind] and not with_generation:
        raise ValueError(f"{kind} tokens carry {_ID_COUNT[kind]} ids, got {len(ids)}")
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
            raise ValueError(f"token ids must be integers in [0, 2**63), got {value!r}")
    day = (issued - EPOCH).days
    if day < 0:
        raise ValueError(f"issue date {issued} is before {EPOCH}")
    code = _GENERATION_CODES[kind] if with_generation else _KIND_CODES[kind]
    body = bytes([_VERSION << 4 | code]) + b"".join([_varint(v) for v in (*ids, day)])
    return _base32(body + _mac(secret, body))


def verify(
    token: str,
    *,
    kind: TokenKind,
    secrets: Sequence[str],
    today: date,
    max_age_days: int | None,
) -> TokenPayload:
    """The payload of a genuine, unexpired token of ``kind``; raises ``InvalidToken`` otherwise.

    ``secrets`` lists the current secret first, then older ones still accepted during a rotation; empty
    entries are ignored. A token dated more than a day after ``today`` counts as expired: it is outside
    its validity window either way.
    """
    if isinstance(secrets, str):  # a bare string would be tried one character at a time
        raise TypeError("secrets must be a sequence of secrets, not a string")
    raw = _decode(token)
    if len(raw) <= MAC_BYTES + 1:
        raise InvalidToken(TokenError.MALFORMED, "too short")
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    token_kind, ids, day = _parse_body(body)

    key_index = _matching_key(body, mac, secrets)
    if key_index is None:
        raise InvalidToken(TokenError.TAMPERED, "signature mismatch")
    if token_kind is not kind:
        raise InvalidToken(TokenError.WRONG_KIND, f"expected {kind}, got {token_kind}")
    try:
        issued = EPOCH + timedelta(days=day)
    except OverflowError:
        raise InvalidToken(TokenError.MALFORMED, "issue day out of range") from None
    age = (today - issued).days
    if age < -FUTURE_SKEW_DAYS:
        raise InvalidToken(TokenError.EXPIRED, f"issued in the future ({issued})")
    if max_age_days is not None and age > max_age_days:
        raise InvalidToken(TokenError.EXPIRED, f"issued {issued}, {age} days ago")
    return TokenPayload(kind=token_kind, ids=ids, issued=issued, key_index=key_index)


@lru_cache(maxsize=16)
def _keyed(secret: str) -> hmac.HMAC:
    """The HMAC state after the key and the context: copying it skips rehashing them for every token."""
    return hmac.new(secret.encode("utf-8"), _MAC_CONTEXT, hashlib.sha256)


def _mac(secret: str, body: bytes) -> bytes:
    mac = _keyed(secret).copy()
    mac.update(body)
    return mac.digest()[:MAC_BYTES]


def _matching_key(body: bytes, mac: bytes, secrets: Sequence[str]) -> int | None:
    found: int | None = None
    for index, secret in enumerate(secrets):
        # An empty key would let anyone mint tokens, so an unset previous secret must never verify.
        if secret and hmac.compare_digest(_mac(secret, body), mac) and found is None:
            found = index
    return found


def _decode(token: str) -> bytes:
    text = token.strip().lower()
    if not text or len(text) > MAX_TOKEN_CHARS or not set(text) <= _BASE32_ALPHABET:
        raise InvalidToken(TokenError.MALFORMED, "not a base32 token")
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except binascii.Error:
        raise InvalidToken(TokenError.MALFORMED, "bad base32 length") from None
    # b32decode ignores stray low bits in the last character; insist on the one spelling we emit.
    if _base32(raw) != text:
        raise InvalidToken(TokenError.MALFORMED, "non-canonical base32")
    return raw


def _parse_body(body: bytes) -> tuple[TokenKind, tuple[int, ...], int]:
    version, code = body[0] >> 4, body[0] & 0x0F
    if version != _VERSION:
        raise InvalidToken(TokenError.MALFORMED, f"unknown token version {version}")
    kind = _KINDS_BY_CODE.get(code)
    if kind is None:
        raise InvalidToken(TokenError.MALFORMED, f"unknown token kind {code}")
    values: list[int] = []
    pos = 1
    with_generation = _GENERATION_CODES.get(kind) == code
    for _ in range(_ID_COUNT[kind] + (2 if with_generation else 1)):
        value, pos = _read_varint(body, pos)
        values.append(value)
    if pos != len(body):
        raise InvalidToken(TokenError.MALFORMED, "trailing bytes")
    return kind, tuple(values[:-1]), values[-1]


_BASE32_PAIRS = [a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567"]


def _base32(raw: bytes) -> str:
    """RFC 4648 base32, lower case, unpadded (as base64.b32encode spells it), ten bits at a time: a token is
    signed for every recipient of every digest, and this takes three quarters of the time of the stdlib's."""
    pad = -len(raw) % 5
    number = int.from_bytes(raw + bytes(pad), "big")
    bits = (len(raw) + pad) * 8
    text = "".join([_BASE32_PAIRS[(number >> shift) & 1023] for shift in range(bits - 10, -1, -10)])
    return text[: -(-len(raw) * 8 // 5)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift_index in range(_MAX_VARINT_BYTES):
        if pos >= len(data):
            raise InvalidToken(TokenError.MALFORMED, "truncated")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * shift_index)
        if not byte & 0x80:
            if byte == 0 and shift_index > 0:
                raise InvalidToken(TokenError.MALFORMED, "non-minimal varint")
            return value, pos
    raise InvalidToken(TokenError.MALFORMED, "varint too long")


def verified_ids(token: str, kind: TokenKind, *, secrets: Sequence[str], today: date,
                 max_age_days: int | None) -> tuple[int, ...] | None:
    """The ids a valid token carries, or None for any invalid, expired or foreign token."""
    try:
        payload = verify(token, kind=kind, secrets=secrets, today=today, max_age_days=max_age_days)
    except InvalidToken:
        return None
    return tuple(payload.ids)


def peek_kind(token: str) -> TokenKind | None:
    """The kind a token says it is, without checking its signature: only to choose which verification to run."""
    try:
        raw = _decode(token)
        if len(raw) <= MAC_BYTES + 1:
            return None
        return _parse_body(raw[:-MAC_BYTES])[0]
    except InvalidToken:
        return None


def unsubscribe_generation(ids: Sequence[int]) -> int:
    """The token generation an UNSUBSCRIBE or DIGEST token's ids carry (0 for a token minted without one)."""
    return ids[2] if len(ids) > 2 else 0


def signed_by_us(token: str, *, secrets: Sequence[str]) -> bool:
    """Whether ``token`` is a well-formed token of any kind, signed with one of ``secrets`` (age not checked)."""
    try:
        raw = _decode(token)
        if len(raw) <= MAC_BYTES + 1:
            return False
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        _parse_body(body)
    except InvalidToken:
        return False
    return _matching_key(body, mac, secrets) is not None


def unsubscribe_ids(user_id: int, category_id: int, generation: int) -> tuple[int, ...]:
    """The ids an UNSUBSCRIBE token carries (category id ANNOUNCEMENTS_CATEGORY_ID for the announcements):
    generation 0 is left out, so tokens minted before generations existed and new ones for never-rotated users
    are the same."""
    return (user_id, category_id) if generation == 0 else (user_id, category_id, generation)


def digest_ids(user_id: int, period: str, generation: int) -> tuple[int, ...]:
    """The ids a DIGEST token carries for the "daily" or "weekly" digest; generation 0 left out, as above."""
    return unsubscribe_ids(user_id, DIGEST_CODES[period], generation)
