from __future__ import annotations

from datetime import date

import pytest

from qaflow_mail.mail.addresses import (
    Announce,
    Bounce,
    Confirm,
    Destination,
    NewTopic,
    NoReply,
    Postmaster,
    Reply,
    Request,
    Unsubscribe,
    classify,
    is_valid_slug,
    reserved_local_parts,
    token_address,
)
from qaflow_mail.mail.tokens import TokenKind, sign, verify

DOMAIN = "forum.example.org"
SLUGS = frozenset({"python", "rust-lang", "general"})


def _classify(address: str, **options: str) -> Destination | None:
    return classify(address, domain=DOMAIN, category_slugs=SLUGS, **options)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("python@forum.example.org", NewTopic("python")),
        ("rust-lang@forum.example.org", NewTopic("rust-lang")),
        ("Python@Forum.Example.ORG", NewTopic("python")),
        ("<general@forum.example.org>", NewTopic("general")),
        ("python@forum.example.org.", NewTopic("python")),
        ("python-request@forum.example.org", Request("python")),
        ("RUST-LANG-REQUEST@forum.example.org", Request("rust-lang")),
        ("announce@forum.example.org", Announce()),
        ("reply+abc234@forum.example.org", Reply("abc234")),
        ("REPLY+ABC234@forum.example.org", Reply("abc234")),
        ("unsubscribe+tok@forum.example.org", Unsubscribe("tok")),
        ("bounces+tok@forum.example.org", Bounce("tok")),
        ("confirm+tok@forum.example.org", Confirm("tok")),
        ("postmaster@forum.example.org", Postmaster()),
        ("PostMaster@FORUM.example.org", Postmaster()),
        ("Postmaster", Postmaster()),
        ("<postmaster>", Postmaster()),
        ('"reply+abc"@forum.example.org', Reply("abc")),
    ],
)
def test_our_addresses(address: str, expected: Destination) -> None:
    assert _classify(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "python@other.example.org",  # another domain
        "python@sub.forum.example.org",
        "postmaster@other.example.org",
        "abuse@forum.example.org",
        "mailer-daemon@forum.example.org",
        "noreply@forum.example.org",
        "nosuchcategory@forum.example.org",
        "nosuchcategory-request@forum.example.org",
        "reply@forum.example.org",  # token routes need a token
        "reply+@forum.example.org",
        "unsubscribe@forum.example.org",
        "bounces@forum.example.org",
        "confirm@forum.example.org",
        "python+tag@forum.example.org",
        "announce+x@forum.example.org",
        "python-unsubscribe@forum.example.org",
        "python",  # no domain: only postmaster may omit it
        "",
        "@forum.example.org",
        "python@",
        "py thon@forum.example.org",
        "python\n@forum.example.org",
    ],
)
def test_not_ours(address: str) -> None:
    assert _classify(address) is None


def test_reserved_names_win_over_a_category_with_the_same_slug() -> None:
    slugs = {"notifications", "announce", "postmaster", "python"}
    assert classify("notifications@forum.example.org", domain=DOMAIN, category_slugs=slugs) == NoReply()
    assert classify("announce@forum.example.org", domain=DOMAIN, category_slugs=slugs) == Announce()
    assert classify("postmaster@forum.example.org", domain=DOMAIN, category_slugs=slugs) == Postmaster()


def test_a_renamed_announce_address() -> None:
    assert _classify("news@forum.example.org", announce_local="news") == Announce()
    assert _classify("announce@forum.example.org", announce_local="news") is None
    assert "news" in reserved_local_parts(announce_local="news")
    assert not is_valid_slug("news", announce_local="news")


def test_configured_domain_may_be_given_in_any_case_or_as_unicode() -> None:
    assert classify("python@forum.example.org", domain="FORUM.Example.org.", category_slugs=SLUGS) == NewTopic("python")
    assert classify("python@xn--bcher-kva.example", domain="bücher.example", category_slugs=SLUGS) == NewTopic("python")


def test_a_signed_reply_address_classifies_and_verifies_after_lowercasing() -> None:
    token = sign(TokenKind.REPLY, (2**40, 17), secret="s", issued=date(2024, 1, 1))
    destination = _classify(f"REPLY+{token.upper()}@FORUM.EXAMPLE.ORG")
    assert isinstance(destination, Reply)
    payload = verify(destination.token, kind=TokenKind.REPLY, secrets=["s"], today=date(2024, 1, 2), max_age_days=30)
    assert payload.ids == (2**40, 17)


def test_reserved_local_parts() -> None:
    assert reserved_local_parts() == {
        "announce",
        "bounces",
        "reply",
        "unsubscribe",
        "confirm",
        "moderate",
        "postmaster",
        "notifications",
        "abuse",
        "mailer-daemon",
        "noreply",
    }


@pytest.mark.parametrize("slug", ["python", "a", "0", "rust-lang", "c99", "a" * 63, "x-requests"])
def test_valid_slugs(slug: str) -> None:
    assert is_valid_slug(slug)


@pytest.mark.parametrize(
    "slug",
    [
        "",
        "a" * 64,
        "Python",
        "-python",
        "py_thon",
        "py.thon",
        "py+thon",
        "python\n",
        "pythön",
        "python-request",
        "python-unsubscribe",
        "reply",
        "announce",
        "postmaster",
        "notifications",
        "mailer-daemon",
    ],
)
def test_invalid_slugs(slug: str) -> None:
    assert not is_valid_slug(slug)


@pytest.mark.parametrize(
    ("kind", "destination"),
    [
        (TokenKind.REPLY, Reply),
        (TokenKind.UNSUBSCRIBE, Unsubscribe),
        (TokenKind.BOUNCE, Bounce),
        (TokenKind.CONFIRM, Confirm),
    ],
)
def test_token_address_classifies_back_to_its_kind(kind: TokenKind, destination: type) -> None:
    token = sign(kind, (2**40, 2**40), secret="s", issued=date(2099, 1, 1))
    address = token_address(kind, token, domain="Forum.Example.org")
    assert len(address.split("@")[0]) <= 64
    assert _classify(address) == destination(token)


def test_token_address_refuses_empty_or_oversized_tokens() -> None:
    with pytest.raises(ValueError):
        token_address(TokenKind.REPLY, "", domain=DOMAIN)
    with pytest.raises(ValueError):
        token_address(TokenKind.UNSUBSCRIBE, "a" * 53, domain=DOMAIN)
