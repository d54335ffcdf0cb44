from __future__ import annotations

import base64
import random
from datetime import date, timedelta

import pytest

from qaflow_mail.mail import tokens
from qaflow_mail.mail.tokens import (
    MAX_ID,
    InvalidToken,
    TokenError,
    TokenKind,
    TokenPayload,
    sign,
    verify,
)

SECRET = "current-secret"
OLD_SECRET = "previous-secret"
ISSUED = date(2024, 5, 1)
LOCAL_PREFIXES = ("reply+", "unsubscribe+", "bounces+", "confirm+")
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def _verify(token: str, kind: TokenKind = TokenKind.REPLY, **overrides: object) -> TokenPayload:
    options: dict[str, object] = {
        "kind": kind,
        "secrets": [SECRET],
        "today": ISSUED,
        "max_age_days": 180,
    }
    options.update(overrides)
    return verify(token, **options)  # type: ignore[arg-type]


def _reason(token: str, kind: TokenKind = TokenKind.REPLY, **overrides: object) -> TokenError:
    with pytest.raises(InvalidToken) as caught:
        _verify(token, kind, **overrides)
    return caught.value.reason


@pytest.mark.parametrize("kind", list(TokenKind))
def test_round_trip_for_every_kind(kind: TokenKind) -> None:
    token = sign(kind, (123, 456), secret=SECRET, issued=ISSUED)
    assert _verify(token, kind) == TokenPayload(kind=kind, ids=(123, 456), issued=ISSUED, key_index=0)


def test_tokens_are_lowercase_base32_and_deterministic() -> None:
    token = sign(TokenKind.REPLY, (1, 2), secret=SECRET, issued=ISSUED)
    assert token == sign(TokenKind.REPLY, (1, 2), secret=SECRET, issued=ISSUED)
    assert set(token) <= set(BASE32)
    assert "=" not in token


def test_token_survives_case_changes() -> None:
    token = sign(TokenKind.REPLY, (77, 88), secret=SECRET, issued=ISSUED)
    assert token == token.lower()
    assert _verify(token.upper()).ids == (77, 88)
    assert _verify(f"  {token}\n").ids == (77, 88)


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize("issued", [ISSUED, date(2099, 12, 31), date(9999, 12, 31)])
def test_local_part_fits_64_octets_for_ids_up_to_2_pow_40(kind: TokenKind, issued: date) -> None:
    token = sign(kind, (2**40, 2**40), secret=SECRET, issued=issued)
    for prefix in LOCAL_PREFIXES:
        assert len((prefix + token).encode("ascii")) <= 64


@pytest.mark.parametrize("kind", list(TokenKind))
def test_even_the_largest_ids_fit_this_century(kind: TokenKind) -> None:
    token = sign(kind, (MAX_ID, MAX_ID), secret=SECRET, issued=date(2099, 12, 31))
    assert max(len(prefix + token) for prefix in LOCAL_PREFIXES) <= 64
    assert _verify(token, kind, today=date(2099, 12, 31)).ids == (MAX_ID, MAX_ID)


def test_random_ids_round_trip() -> None:
    rng = random.Random(20240501)
    for _ in range(300):
        ids = (rng.randrange(0, 2 ** rng.randrange(1, 63)), rng.randrange(0, 2**40))
        issued = date(2020, 1, 1) + timedelta(days=rng.randrange(0, 30000))
        token = sign(TokenKind.BOUNCE, ids, secret=SECRET, issued=issued)
        payload = _verify(token, TokenKind.BOUNCE, today=issued, max_age_days=None)
        assert (payload.ids, payload.issued) == (ids, issued)


def test_the_kind_is_bound_into_the_token() -> None:
    reply = sign(TokenKind.REPLY, (5, 6), secret=SECRET, issued=ISSUED)
    unsubscribe = sign(TokenKind.UNSUBSCRIBE, (5, 6), secret=SECRET, issued=ISSUED)
    assert reply != unsubscribe
    assert _reason(reply, TokenKind.UNSUBSCRIBE) is TokenError.WRONG_KIND
    assert _reason(unsubscribe, TokenKind.CONFIRM) is TokenError.WRONG_KIND


def test_a_token_from_another_secret_is_tampered() -> None:
    token = sign(TokenKind.REPLY, (5, 6), secret="someone-else", issued=ISSUED)
    assert _reason(token) is TokenError.TAMPERED


def test_every_single_character_change_is_rejected() -> None:
    token = sign(TokenKind.REPLY, (31337, 42), secret=SECRET, issued=ISSUED)
    for position, original in enumerate(token):
        for replacement in BASE32:
            if replacement == original:
                continue
            forged = token[:position] + replacement + token[position + 1 :]
            with pytest.raises(InvalidToken) as caught:
                _verify(forged)
            assert caught.value.reason in {TokenError.TAMPERED, TokenError.MALFORMED}


def test_changing_the_mac_is_tampered_not_malformed() -> None:
    token = sign(TokenKind.REPLY, (31337, 42), secret=SECRET, issued=ISSUED)
    middle_of_mac = len(token) - 6
    flipped = BASE32[(BASE32.index(token[middle_of_mac]) + 1) % 32]
    assert _reason(token[:middle_of_mac] + flipped + token[middle_of_mac + 1 :]) is TokenError.TAMPERED


def test_only_the_canonical_base32_spelling_is_accepted() -> None:
    # 16 bytes need 26 characters, leaving 2 unused low bits in the last one; a variant that only differs
    # there decodes to the same bytes but must not count as another token (callers dedupe by string).
    token = sign(TokenKind.REPLY, (200, 1), secret=SECRET, issued=ISSUED)
    assert len(token) == 26
    variant = token[:-1] + BASE32[BASE32.index(token[-1]) | 1]
    assert variant != token
    assert _reason(variant) is TokenError.MALFORMED


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "reply", "abc!def", "a" * 65, "a", "aaaaaaa", "00000000000000000000000000"],
)
def test_garbage_is_malformed(garbage: str) -> None:
    assert _reason(garbage) is TokenError.MALFORMED


def test_truncated_token_is_rejected() -> None:
    token = sign(TokenKind.REPLY, (1, 2), secret=SECRET, issued=ISSUED)
    for cut in range(1, len(token)):
        with pytest.raises(InvalidToken):
            _verify(token[:cut])


def test_expiry_window() -> None:
    token = sign(TokenKind.REPLY, (1, 2), secret=SECRET, issued=ISSUED)
    assert _verify(token, today=ISSUED + timedelta(days=180)).issued == ISSUED
    assert _reason(token, today=ISSUED + timedelta(days=181)) is TokenError.EXPIRED
    assert _verify(token, today=ISSUED + timedelta(days=5000), max_age_days=None).ids == (1, 2)


def test_small_clock_skew_is_tolerated_but_not_far_future_tokens() -> None:
    token = sign(TokenKind.REPLY, (1, 2), secret=SECRET, issued=ISSUED)
    assert _verify(token, today=ISSUED - timedelta(days=1)).issued == ISSUED
    assert _reason(token, today=ISSUED - timedelta(days=2)) is TokenError.EXPIRED
    assert _reason(token, today=ISSUED - timedelta(days=2), max_age_days=None) is TokenError.EXPIRED


def test_previous_secret_is_accepted_during_rotation() -> None:
    old = sign(TokenKind.UNSUBSCRIBE, (9, 0), secret=OLD_SECRET, issued=ISSUED)
    payload = _verify(old, TokenKind.UNSUBSCRIBE, secrets=[SECRET, OLD_SECRET])
    assert payload.ids == (9, 0)
    assert payload.key_index == 1
    assert _reason(old, TokenKind.UNSUBSCRIBE, secrets=[SECRET]) is TokenError.TAMPERED


def test_an_empty_secret_never_verifies() -> None:
    # A token "signed" with an empty key is what anyone could forge; an unset previous secret must not help.
    genuine = sign(TokenKind.REPLY, (1, 2), secret=SECRET, issued=ISSUED)
    body = tokens._decode(genuine)[: -tokens.MAC_BYTES]
    forged = base64.b32encode(body + tokens._mac("", body)).decode().rstrip("=").lower()
    assert _reason(forged, secrets=[SECRET, ""]) is TokenError.TAMPERED
    assert _reason(genuine, secrets=["", ""]) is TokenError.TAMPERED


@pytest.mark.parametrize(
    ("ids", "secret", "issued"),
    [
        ((1,), SECRET, ISSUED),
        ((1, 2, 3), SECRET, ISSUED),
        ((-1, 2), SECRET, ISSUED),
        ((True, 2), SECRET, ISSUED),
        ((2**63, 2), SECRET, ISSUED),
        ((1, 2), "", ISSUED),
        ((1, 2), SECRET, date(2019, 12, 31)),
    ],
)
def test_sign_rejects_bad_input(ids: tuple[int, ...], secret: str, issued: date) -> None:
    with pytest.raises(ValueError):
        sign(TokenKind.REPLY, ids, secret=secret, issued=issued)


def test_invalid_token_is_a_value_error_with_a_reason() -> None:
    error = InvalidToken(TokenError.EXPIRED, "old")
    assert isinstance(error, ValueError)
    assert str(error) == "expired: old"
    assert str(InvalidToken(TokenError.WRONG_KIND)) == "wrong kind"


def test_secrets_must_not_be_a_bare_string() -> None:
    token = sign(TokenKind.REPLY, (1, 2), secret="s", issued=ISSUED)
    with pytest.raises(TypeError):
        verify(token, kind=TokenKind.REPLY, secrets="s", today=ISSUED, max_age_days=None)


@pytest.mark.parametrize("kind", [TokenKind.UNSUBSCRIBE, TokenKind.DIGEST])
def test_tokens_that_stop_mail_carry_a_generation_and_generation_0_is_the_old_spelling(kind: TokenKind) -> None:
    plain = sign(kind, (5, 1), secret=SECRET, issued=ISSUED)
    assert sign(kind, tokens.unsubscribe_ids(5, 1, 0), secret=SECRET, issued=ISSUED) == plain
    assert sign(TokenKind.DIGEST, tokens.digest_ids(5, "daily", 0), secret=SECRET, issued=ISSUED) == sign(
        TokenKind.DIGEST, (5, 1), secret=SECRET, issued=ISSUED)
    rotated = sign(kind, (5, 1, 3), secret=SECRET, issued=ISSUED)
    assert _verify(rotated, kind).ids == (5, 1, 3) and tokens.unsubscribe_generation((5, 1, 3)) == 3
    assert tokens.unsubscribe_generation(_verify(plain, kind).ids) == 0
    other = TokenKind.DIGEST if kind is TokenKind.UNSUBSCRIBE else TokenKind.UNSUBSCRIBE
    assert _reason(rotated, other) is TokenError.WRONG_KIND
    with pytest.raises(ValueError):
        sign(TokenKind.REPLY, (5, 1, 3), secret=SECRET, issued=ISSUED)  # only the kinds that stop mail


def test_base32_is_rfc4648_lower_case_unpadded_for_every_length() -> None:
    rng = random.Random(5)
    for length in range(64):
        raw = bytes(rng.randrange(256) for _ in range(length))
        assert tokens._base32(raw) == base64.b32encode(raw).decode("ascii").rstrip("=").lower()
