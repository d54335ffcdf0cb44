"""The envelope rebuilt from trace headers, for mail read from a hosted IMAP mailbox."""

from __future__ import annotations

import pytest

from qaflow_mail.mail.envelope import recipients_from_headers, sender_from_headers
from qaflow_mail.mail.parse import ParsedMail, parse_message

DOMAIN = "forum.test"


def mail(*headers: str, body: str = "Hello\r\n") -> ParsedMail:
    base = ["From: Alice <Alice@Example.org>", "Subject: Hi", "Message-ID: <m1@example.org>"]
    return parse_message(("\r\n".join([*base, *headers]) + "\r\n\r\n" + body).encode())


def test_delivered_to_wins_over_to() -> None:
    parsed = mail("Delivered-To: help@forum.test", "To: general@forum.test")
    assert recipients_from_headers(parsed, domain=DOMAIN) == ["help@forum.test"]


def test_every_delivered_to_on_our_domain_is_kept_in_order_without_duplicates() -> None:
    parsed = mail("Delivered-To: <Help@Forum.Test>", "Delivered-To: general@forum.test",
                  "Delivered-To: help@forum.test", "To: other@forum.test")
    assert recipients_from_headers(parsed, domain=DOMAIN) == ["help@forum.test", "general@forum.test"]


def test_mailbox_address_in_delivered_to_falls_through_to_x_original_to() -> None:
    # A catch-all alias: the MTA delivered to the hosting mailbox; the forum address was the original recipient.
    parsed = mail("Delivered-To: forum-inbox@mailhost.example", "X-Original-To: help@forum.test",
                  "To: general@forum.test")
    assert recipients_from_headers(parsed, domain=DOMAIN) == ["help@forum.test"]


def test_x_original_to_when_no_delivered_to() -> None:
    parsed = mail("X-Original-To: reply+abc123@forum.test", "To: someone@example.net")
    assert recipients_from_headers(parsed, domain=DOMAIN) == ["reply+abc123@forum.test"]


@pytest.mark.parametrize("header", ["Envelope-To", "X-Envelope-To"])
def test_envelope_to_headers(header: str) -> None:
    parsed = mail(f"{header}: general@forum.test, help@forum.test", "To: x@forum.test")
    assert recipients_from_headers(parsed, domain=DOMAIN) == ["general@forum.test", "help@forum.test"]


def test_to_and_cc_on_our_domain_only_when_no_envelope_header() -> None:
    parsed = mail("To: Bob <bob@example.net>, General <GENERAL@forum.test>",
                  "Cc: help@FORUM.TEST., general@forum.test, carol@elsewhere.test")
    assert recipients_from_headers(parsed, domain=DOMAIN) == ["general@forum.test", "help@forum.test"]


def test_subdomain_is_not_our_domain() -> None:
    parsed = mail("To: general@lists.forum.test", "Cc: help@forum.test")
    assert recipients_from_headers(parsed, domain="Forum.Test") == ["help@forum.test"]


def test_no_address_on_our_domain_returns_the_first_named_so_the_pipeline_can_refuse_it() -> None:
    parsed = mail("Delivered-To: inbox@mailhost.example", "To: bob@example.net")
    assert recipients_from_headers(parsed, domain=DOMAIN) == ["inbox@mailhost.example"]
    assert recipients_from_headers(mail("To: bob@example.net, Carol <carol@x.test>"), domain=DOMAIN) == [
        "bob@example.net", "carol@x.test"]


def test_no_recipient_at_all() -> None:
    assert recipients_from_headers(mail(), domain=DOMAIN) == []


def test_return_path_is_the_envelope_sender() -> None:
    parsed = mail("Return-Path: <bounces+Tok3n@lists.example.org>", "Return-Path: <older@relay.example>")
    assert sender_from_headers(parsed) == "bounces+Tok3n@lists.example.org"


@pytest.mark.parametrize("value", ["<>", "< >", " <> "])
def test_null_return_path_is_the_null_sender(value: str) -> None:
    assert sender_from_headers(mail(f"Return-Path: {value}")) == ""


def test_without_return_path_the_from_address_stands_in() -> None:
    assert sender_from_headers(mail()) == "alice@example.org"


def test_unusable_return_path_falls_back_to_from() -> None:
    assert sender_from_headers(mail("Return-Path: MAILER-DAEMON")) == "alice@example.org"


def test_no_sender_at_all() -> None:
    parsed = parse_message(b"Subject: nobody\r\n\r\nbody\r\n")
    assert sender_from_headers(parsed) == ""
