"""Reading bounces: RFC 3464 reports, flufl.bounce's formats, hard versus soft, and VERP tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qaflow_mail.mail.bounces import (
    BounceReport,
    find_bounce,
    is_bounce_subject,
    is_daemon_sender,
    read_bounce,
    verp_token,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"


def dsn(*recipient_blocks: str, subject: str = "Undelivered Mail Returned to Sender", status_type: str = "") -> bytes:
    """A Postfix-shaped multipart/report with the given per-recipient blocks."""
    status_type = status_type or "message/delivery-status"
    blocks = "\r\n\r\n".join(block.strip().replace("\n", "\r\n") for block in recipient_blocks)
    return (
        "Return-Path: <>\r\n"
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"Subject: {subject}\r\n"
        "To: bounces+T0K3N@qaflow.localhost\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="rb"\r\n'
        "\r\n"
        "--rb\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        "This is the mail system at host mx.example.net.\r\n\r\n"
        f"--rb\r\nContent-Type: {status_type}\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"{blocks}\r\n\r\n"
        "--rb\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "From: notifications@qaflow.localhost\r\nSubject: [QAFlow] New answer\r\n\r\n"
        "--rb--\r\n"
    ).encode()


def plain(*headers: str, body: str) -> bytes:
    lines = ["Date: Mon, 11 Mar 2024 10:00:00 +0000", "Message-ID: <m1@example.net>", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode("utf-8")


# ------------------------------------------------------------------------------------------- fixtures


def test_postfix_hard_bounce() -> None:
    report = read_bounce((FIXTURES / "bounce_postfix_hard_5_1_1.eml").read_bytes())
    assert report is not None
    # Original-Recipient wins over Final-Recipient (it is what we sent to); addresses are lowercased.
    assert report.permanent == frozenset({"old.subscriber@example.net"})
    assert report.temporary == frozenset()
    assert report.diagnostic.startswith("550 5.1.1 <old.subscriber@example.net>: Recipient address rejected")
    assert "\n" not in report.diagnostic


def test_postfix_delay_warning_is_temporary() -> None:
    report = read_bounce((FIXTURES / "bounce_postfix_delayed_4_4_1.eml").read_bytes())
    assert report == BounceReport(
        permanent=frozenset(),
        temporary=frozenset({"busy.reader@slow.example.com"}),
        diagnostic="4.4.1 connect to mx.slow.example.com[198.51.100.9]:25: Connection timed out",
    )


@pytest.mark.parametrize(
    "name",
    [
        "auto_vacation_auto_submitted.eml",
        "auto_exchange_automatic_reply.eml",
        "auto_exchange_xars_ordinary.eml",
        "auto_abwesenheitsnotiz_de.eml",
        "auto_loop_40_received.eml",
        "auto_loop_own_list_id.eml",
    ],
)
def test_other_fixtures_are_not_bounces(name: str) -> None:
    assert read_bounce((FIXTURES / name).read_bytes()) is None


# ------------------------------------------------------------------------------------------- RFC 3464


def test_status_class_decides_hard_or_soft() -> None:
    report = read_bounce(
        dsn(
            "Final-Recipient: rfc822; hard@example.net\nAction: failed\nStatus: 5.2.1",
            # A "failed" 4.x.x is a transient failure the MTA gave up on: a soft bounce.
            "Final-Recipient: rfc822; expired@example.net\nAction: failed\nStatus: 4.4.7",
            "Final-Recipient: rfc822; later@example.net\nAction: delayed\nStatus: 4.2.2",
            "Final-Recipient: rfc822; fine@example.net\nAction: delivered\nStatus: 2.0.0",
            "Final-Recipient: rfc822; relayed@example.net\nAction: relayed\nStatus: 2.0.0",
        )
    )
    assert report is not None
    assert report.permanent == frozenset({"hard@example.net"})
    assert report.temporary == frozenset({"expired@example.net", "later@example.net"})


def test_action_decides_when_status_is_missing() -> None:
    report = read_bounce(
        dsn(
            "Final-Recipient: rfc822; gone@example.net\nAction: failed",
            "Final-Recipient: rfc822; slow@example.net\nAction: delayed",
        )
    )
    assert report is not None
    assert report.permanent == frozenset({"gone@example.net"})
    assert report.temporary == frozenset({"slow@example.net"})


def test_original_recipient_is_preferred_and_odd_address_forms_are_read() -> None:
    report = read_bounce(
        dsn(
            "Original-Recipient: rfc822;First@Example.NET\nFinal-Recipient: rfc822; alias@example.net\n"
            "Action: failed\nStatus: 5.1.1",
            "Final-Recipient: rfc822; <angled@example.net>\nAction: failed\nStatus: 5.1.1",
            "Original-Recipient: x400; /S=zz/\nFinal-Recipient: RFC822; upper@example.net\nAction: failed\n"
            "Status: 5.1.1",
        )
    )
    assert report is not None
    assert report.permanent == frozenset({"first@example.net", "angled@example.net", "upper@example.net"})


def test_one_address_failing_hard_and_soft_counts_as_hard() -> None:
    report = read_bounce(
        dsn(
            "Final-Recipient: rfc822; both@example.net\nAction: delayed\nStatus: 4.2.2",
            "Final-Recipient: rfc822; both@example.net\nAction: failed\nStatus: 5.2.2",
        )
    )
    assert report is not None
    assert report.permanent == frozenset({"both@example.net"})
    assert report.temporary == frozenset()


def test_global_delivery_status_with_utf8_address() -> None:
    raw = dsn(
        "Final-Recipient: utf-8; jürgen@exämple.de\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 mailbox unavailable",
        status_type="message/global-delivery-status",
    )
    report = read_bounce(raw)
    assert report is not None
    assert report.permanent == frozenset({"jürgen@exämple.de"})
    assert report.diagnostic == "550 5.1.1 mailbox unavailable"


def test_success_notification_is_a_report_without_failures() -> None:
    report = read_bounce(
        dsn(
            "Final-Recipient: rfc822; fine@example.net\nAction: delivered\nStatus: 2.0.0",
            subject="Delivery Status Notification (Success)",
        )
    )
    assert report is not None
    assert report.addresses == frozenset()


def test_finding_tells_why() -> None:
    finding = find_bounce(dsn("Final-Recipient: rfc822; gone@example.net\nAction: failed\nStatus: 5.1.1"))
    assert finding is not None
    assert finding.evidence == "delivery-status report"


# -------------------------------------------------------------------------------- other bounce formats


def test_exim_bounce() -> None:
    raw = plain(
        "Return-Path: <>",
        "From: Mail Delivery System <Mailer-Daemon@mail.example.net>",
        "To: bounces+T0K3N@qaflow.localhost",
        "Subject: Mail delivery failed: returning message to sender",
        "X-Failed-Recipients: gone@example.net",
        "Auto-Submitted: auto-replied",
        body=(
            "This message was created automatically by mail delivery software.\n\n"
            "A message that you sent could not be delivered to one or more of its\n"
            "recipients. This is a permanent error. The following address(es) failed:\n\n"
            "  gone@example.net\n    SMTP error from remote mail server after RCPT TO:<gone@example.net>:\n"
            "    550 5.1.1 User unknown\n"
        ),
    )
    finding = find_bounce(raw)
    assert finding is not None
    assert finding.evidence == "X-Failed-Recipients header"
    assert finding.report.permanent == frozenset({"gone@example.net"})
    assert finding.report.diagnostic == "550 5.1.1 User unknown"


def test_qmail_bounce() -> None:
    raw = plain(
        "From: MAILER-DAEMON@mail.example.net",
        "To: bounces+T0K3N@qaflow.localhost",
        "Subject: failure notice",
        body=(
            "Hi. This is the qmail-send program at mail.example.net.\n"
            "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
            "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
            "<gone@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
            "--- Below this line is a copy of the message.\n\n"
            "Return-Path: <bounces+T0K3N@qaflow.localhost>\nSubject: [QAFlow] New answer\n"
        ),
    )
    report = read_bounce(raw)
    assert report is not None
    assert report.permanent == frozenset({"gone@example.net"})


def test_mailer_daemon_report_without_readable_addresses_is_still_a_bounce() -> None:
    raw = plain(
        "From: MAILER-DAEMON (Mail Delivery System)",
        "Subject: Undelivered Mail Returned to Sender",
        body="Something went wrong, but this report names nobody.\n",
    )
    finding = find_bounce(raw)
    assert finding is not None
    assert finding.report.addresses == frozenset()
    assert finding.report.diagnostic == "Undelivered Mail Returned to Sender"
    assert finding.evidence == "mailer-daemon sender and bounce subject"


# ---------------------------------------------------------------------------------------- not bounces


QUOTED_BOUNCE = (
    "My mail server sent me this, what does it mean?\n\n"
    "> This message was created automatically by mail delivery software.\n>\n"
    "> A message that you sent could not be delivered to one or more of its\n"
    "> recipients. The following addresses failed:\n>\n>   friend@example.org\n"
)


def test_person_quoting_a_bounce_is_not_one() -> None:
    raw = plain(
        "From: Carla Mendes <carla@example.com>",
        "Subject: Re: Why do my notifications bounce?",
        body=QUOTED_BOUNCE,
    )
    assert read_bounce(raw) is None
    # The same text from the null sender or to our bounce address is a bounce.
    for report in (read_bounce(raw, null_sender=True), read_bounce(raw, to_bounce_address=True)):
        assert report is not None
        assert report.permanent == frozenset({"friend@example.org"})


def test_forwarded_report_is_not_a_bounce() -> None:
    inner = dsn("Final-Recipient: rfc822; gone@example.net\nAction: failed\nStatus: 5.1.1").decode()
    raw = plain(
        "From: Carla Mendes <carla@example.com>",
        "Subject: Fwd: why did this bounce?",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="fw"',
        body=(
            "--fw\nContent-Type: text/plain\n\nSee attached.\n"
            "--fw\nContent-Type: message/rfc822\n\n" + inner.replace("\r\n", "\n") + "\n--fw--\n"
        ),
    )
    assert read_bounce(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"no headers at all",
        b"\x00\xff\xfe\xfd",
        b"From:\r\nSubject: =?utf-8?b?broken\r\n\r\nbody",
        b"Content-Type: message/delivery-status\r\n\r\nAction: failed\r\n",
        b"Subject: Undeliverable: x\r\nFrom: \xff\xfe <postmaster@\xff.example>\r\n\r\nbody",
    ],
)
def test_odd_input_never_raises(raw: bytes) -> None:
    report = read_bounce(raw)
    assert report is None or isinstance(report, BounceReport)


def test_report_is_frozen() -> None:
    report = BounceReport(frozenset({"a@example.net"}), frozenset(), "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.diagnostic = "y"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Undelivered Mail Returned to Sender", True),
        ("Undeliverable: How do I export?", True),
        ("Mail delivery failed: returning message to sender", True),
        ("Delivery Status Notification (Failure)", True),
        ("Delivery Status Notification (Delay)", True),
        ("Returned mail: see transcript for details", True),
        ("failure notice", True),
        ("Delayed Mail (still being retried)", True),
        ("Mail Delivery Warning", True),
        ("Unzustellbar: Export", True),
        ("Non remis : Export", True),
        ("RE: Your message awaits approval : non remis (delivery failed)", True),
        ("Re: Undelivered Mail Returned to Sender", False),
        ("Fwd: Undeliverable: How do I export?", False),
        ("Why are my mails undeliverable?", False),
        ("How do I export?", False),
        ("", False),
    ],
)
def test_is_bounce_subject(subject: str, expected: bool) -> None:
    assert is_bounce_subject(subject) is expected


@pytest.mark.parametrize(
    ("from_header", "expected"),
    [
        ("MAILER-DAEMON@mx.example.net (Mail Delivery System)", True),
        ("MAILER-DAEMON (Mail Delivery System)", True),
        ("Mail Delivery Subsystem <postmaster@example.net>", True),
        ("<Postmaster\\@example.com@relay.example.com>", True),
        ('"Jetmail System" <>', True),
        ("Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@corp.example.com>", True),
        ("John Postmaster-Smith <john.postmaster@example.com>", False),
        ("Carla Mendes <carla@example.com>", False),
        ("", False),
    ],
)
def test_is_daemon_sender(from_header: str, expected: bool) -> None:
    assert is_daemon_sender(from_header) is expected


@pytest.mark.parametrize(
    ("recipient", "token"),
    [
        ("bounces+K7Q2M4XW9ZC3@qaflow.localhost", "K7Q2M4XW9ZC3"),
        ("bounces+K7Q2M4XW9ZC3@QAFlow.Localhost", "K7Q2M4XW9ZC3"),
        ("<bounces+abc_DEF-123@qaflow.localhost>", "abc_DEF-123"),
        ("  bounces+tok@qaflow.localhost.  ", "tok"),
        ("Bounces+tok@qaflow.localhost", "tok"),
        ("bounces+tok@other.example", None),
        ("bounces+tok@mail.qaflow.localhost", None),
        ("bounces@qaflow.localhost", None),
        ("bounces+@qaflow.localhost", None),
        ("bounces+to.k@qaflow.localhost", None),
        ("bounces+tok+more@qaflow.localhost", None),
        ("reply+tok@qaflow.localhost", None),
        ("xbounces+tok@qaflow.localhost", None),
        ("not an address", None),
        ("", None),
    ],
)
def test_verp_token(recipient: str, token: str | None) -> None:
    assert verp_token(recipient, domain="qaflow.localhost") == token


def test_verp_token_domain_argument_is_case_insensitive() -> None:
    assert verp_token("bounces+tok@qaflow.localhost", domain="QAFLOW.LOCALHOST") == "tok"
