"""Automatic mail (auto-replies, bounces, loops) is recognised and never treated as a post."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qaflow_mail.mail.automatic import MailKind, Verdict, classify_automatic
from qaflow_mail.mail.compose import make_message_id
from qaflow_mail.mail.parse import parse_message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
DOMAIN = "qaflow.localhost"
LIST_ID_SUFFIX = f".{DOMAIN}"
MAX_RECEIVED = 30


def make_mail(
    *headers: str,
    body: str = "A question typed by a person.\n",
    content_type: str = "text/plain; charset=utf-8",
) -> bytes:
    base = {
        "from": "From: Carla Mendes <carla@example.com>",
        "to": "To: new@qaflow.localhost",
        "subject": "Subject: How do I export my answers?",
        "date": "Date: Mon, 11 Mar 2024 10:00:00 +0000",
        "message-id": "Message-ID: <q1.20240311@example.com>",
    }
    extra: list[str] = []
    for header in headers:
        name = header.split(":", 1)[0].strip().lower()
        if name in base:
            base[name] = header
        else:
            extra.append(header)
    lines = [*base.values(), *extra, "MIME-Version: 1.0", f"Content-Type: {content_type}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def classify(
    raw: bytes,
    *,
    envelope_from: str | None = "carla@example.com",
    is_bounce_address: bool = False,
    max_received: int = MAX_RECEIVED,
) -> Verdict:
    return classify_automatic(
        parse_message(raw),
        raw,
        envelope_from=envelope_from,
        our_domain=DOMAIN,
        our_list_id_suffix=LIST_ID_SUFFIX,
        max_received=max_received,
        is_bounce_address=is_bounce_address,
    )


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("auto_vacation_auto_submitted.eml", MailKind.AUTO_REPLY, "Auto-Submitted: auto-replied"),
        ("auto_exchange_automatic_reply.eml", MailKind.AUTO_REPLY, "auto-reply subject"),
        ("auto_exchange_xars_ordinary.eml", MailKind.POST, "no sign"),
        ("auto_abwesenheitsnotiz_de.eml", MailKind.AUTO_REPLY, "auto-reply subject"),
        ("auto_loop_40_received.eml", MailKind.LOOP, "40 Received headers"),
        ("auto_loop_own_list_id.eml", MailKind.LOOP, "List-Id <accounts.qaflow.localhost>"),
        ("bounce_postfix_hard_5_1_1.eml", MailKind.BOUNCE, "delivery-status report"),
        ("bounce_postfix_delayed_4_4_1.eml", MailKind.BOUNCE, "delivery-status report"),
    ],
)
@pytest.mark.parametrize("envelope_from", [None, "sender@example.com"])
def test_fixture_verdicts(name: str, kind: MailKind, reason: str, envelope_from: str | None) -> None:
    verdict = classify((FIXTURES / name).read_bytes(), envelope_from=envelope_from)
    assert verdict.kind is kind
    assert reason in verdict.reason


def test_bounce_fixtures_stay_bounces_with_null_sender_on_the_bounce_address() -> None:
    for name in ("bounce_postfix_hard_5_1_1.eml", "bounce_postfix_delayed_4_4_1.eml"):
        raw = (FIXTURES / name).read_bytes()
        verdict = classify(raw, envelope_from="<>", is_bounce_address=True)
        assert verdict == Verdict(MailKind.BOUNCE, "delivery-status report")


def test_exchange_suppress_header_alone_is_not_automatic() -> None:
    for value in ("All", "OOF, AutoReply", "DR, RN, NRN, OOF, AutoReply"):
        assert classify(make_mail(f"X-Auto-Response-Suppress: {value}")).kind is MailKind.POST


# ----------------------------------------------------------------------------------------- auto-replies


@pytest.mark.parametrize(
    "value", ["auto-replied", "auto-generated", "auto-notified", "Auto-Replied (vacation)", "auto-replied; x=1"]
)
def test_auto_submitted_other_than_no_is_an_auto_reply(value: str) -> None:
    verdict = classify(make_mail(f"Auto-Submitted: {value}"))
    assert verdict.kind is MailKind.AUTO_REPLY
    assert verdict.reason.startswith("Auto-Submitted: ")


@pytest.mark.parametrize("value", ["no", "No", "no (typed by a person)"])
def test_auto_submitted_no_is_a_post(value: str) -> None:
    assert classify(make_mail(f"Auto-Submitted: {value}")).kind is MailKind.POST


@pytest.mark.parametrize("header", ["Precedence", "X-Precedence"])
@pytest.mark.parametrize("value", ["bulk", "junk", "list", "auto_reply", "Bulk"])
def test_bulk_precedence_is_automatic(header: str, value: str) -> None:
    verdict = classify(make_mail(f"{header}: {value}"))
    assert verdict.kind is MailKind.AUTO_REPLY
    assert verdict.reason == f"{header}: {value.lower()}"


@pytest.mark.parametrize("value", ["first-class", "normal", "urgent"])
def test_other_precedence_is_a_post(value: str) -> None:
    assert classify(make_mail(f"Precedence: {value}")).kind is MailKind.POST


@pytest.mark.parametrize(
    "header",
    [
        "X-Autoreply: yes",
        "X-Autorespond: Out of office",
        "X-Auto-Reply: yes",
        "X-Autogenerated: Reply",
        "X-AutoReply-From: carla@example.com",
        "X-Mail-Autoreply: yes",
        "X-FB-Auto-Response: 1",
        "X-Vacation: yes",
        "X-Autoresponse: true",
        "X-Cron-Env: <SHELL=/bin/sh>",
        "Delivered-To: Autoresponder",
        "X-POST-MessageClass: 9; Autoresponder",
    ],
)
def test_autoresponder_headers_are_automatic(header: str) -> None:
    verdict = classify(make_mail(header))
    assert verdict.kind is MailKind.AUTO_REPLY, verdict


@pytest.mark.parametrize("header", ["X-Autoreply: no", "Delivered-To: carla@example.com", "X-Mailer: Thunderbird"])
def test_harmless_headers_are_a_post(header: str) -> None:
    assert classify(make_mail(header)).kind is MailKind.POST


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: How do I export my answers?",
        "Auto: How do I export my answers?",
        "AutoReply: How do I export my answers?",
        "Out of Office: How do I export my answers?",
        "Out of Office AutoReply: How do I export my answers?",
        "Out of office",
        "[AUTO GENERATED] Some subject",
        "[Auto-Reply] Re: export",
        "Abwesenheitsnotiz: Re: Export",
        "Automatische Antwort: Export",
        "Réponse automatique : Exporter mes réponses",
        "Absence du bureau: Export",
        "Respuesta automática: Exportar",
        "Fuera de la oficina: Exportar",
        "Risposta automatica: Esportare",
        "Fuori sede: Esportare",
        "Automatisch antwoord: Exporteren",
        "Resposta automática: Exportar",
        "Automatiskt svar: Export",
        "Frånvaro: Export",
        "Automatisk svar: Eksport",
        "Automatyczna odpowiedź: Eksport",
        "Automatická odpověď: Export",
        "自動応答: エクスポート",
        "自动回复：导出",
        "自動回覆: 匯出",
        "Автоматический ответ: Экспорт",
        "Автоответ: Экспорт",
        "[support #123] AutoReply: export",
    ],
)
def test_auto_reply_subjects_in_many_languages(subject: str) -> None:
    verdict = classify(make_mail(f"Subject: {subject}"))
    assert verdict == Verdict(MailKind.AUTO_REPLY, "auto-reply subject")


@pytest.mark.parametrize(
    "subject",
    [
        "Out of office replies flood our ticket queue",
        "Re: Automatic reply: How do I export my answers?",
        "Automatic reply detection in Python?",
        "Absence of an index makes the query slow",
        "Vacation accrual report is wrong",
        "Question about [vacation] handling",
        "Auto-scaling workers",
        "Undeliverable addresses in the CSV import",
    ],
)
def test_questions_about_auto_replies_are_posts(subject: str) -> None:
    assert classify(make_mail(f"Subject: {subject}")).kind is MailKind.POST


@pytest.mark.parametrize(
    "sender",
    [
        "From: noreply@service.example.com",
        "From: No Reply <no-reply@service.example.com>",
        "From: do-not-reply@service.example.com",
        "From: donotreply@service.example.com",
        "From: MAILER-DAEMON@mx.example.net",
        "From: Mail Delivery Subsystem <postmaster@mx.example.net>",
    ],
)
def test_automated_senders_are_automatic(sender: str) -> None:
    assert classify(make_mail(sender)).kind is MailKind.AUTO_REPLY


@pytest.mark.parametrize(
    "sender", ["From: John Postmaster-Smith <john.postmaster@example.com>", "From: Noreen <noreen@example.com>"]
)
def test_people_with_similar_names_are_posts(sender: str) -> None:
    assert classify(make_mail(sender)).kind is MailKind.POST


def test_read_receipt_is_automatic() -> None:
    raw = make_mail(
        "Subject: Read: How do I export my answers?",
        content_type='multipart/report; report-type=disposition-notification; boundary="b1"',
        body=(
            "--b1\r\nContent-Type: text/plain\r\n\r\nYour message was displayed.\r\n"
            "--b1\r\nContent-Type: message/disposition-notification\r\n\r\n"
            "Final-Recipient: rfc822; carla@example.com\r\n"
            "Disposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--b1--\r\n"
        ),
    )
    verdict = classify(raw)
    assert verdict == Verdict(MailKind.AUTO_REPLY, "read receipt (disposition notification)")


# ------------------------------------------------------------------------------------------ null sender


@pytest.mark.parametrize("envelope_from", ["", "<>", " <> "])
def test_null_envelope_sender_is_automatic(envelope_from: str) -> None:
    assert classify(make_mail(), envelope_from=envelope_from) == Verdict(MailKind.AUTO_REPLY, "null envelope sender")


def test_without_envelope_the_return_path_header_stands_in() -> None:
    raw = make_mail("Return-Path: <>")
    assert classify(raw, envelope_from=None).kind is MailKind.AUTO_REPLY
    assert classify(make_mail("Return-Path: <carla@example.com>"), envelope_from=None).kind is MailKind.POST
    # With an SMTP envelope, a stale Return-Path header copied by some relay does not count.
    assert classify(raw, envelope_from="carla@example.com").kind is MailKind.POST


def test_unrecognised_mail_to_the_bounce_address_is_a_bounce() -> None:
    assert classify(make_mail(), envelope_from="<>", is_bounce_address=True) == Verdict(
        MailKind.BOUNCE, "sent to the bounce address"
    )
    # An auto-responder answering our envelope sender is still an auto-reply.
    vacation = make_mail("Auto-Submitted: auto-replied", "Subject: Away until Monday")
    assert classify(vacation, envelope_from="<>", is_bounce_address=True).kind is MailKind.AUTO_REPLY


# ------------------------------------------------------------------------------------------------ order


def _dsn(*extra_headers: str) -> bytes:
    return make_mail(
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)",
        "Subject: Undelivered Mail Returned to Sender",
        *extra_headers,
        content_type='multipart/report; report-type=delivery-status; boundary="r1"',
        body=(
            "--r1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
            "--r1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
            "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--r1--\r\n"
        ),
    )


def test_dsn_with_null_sender_and_auto_submitted_is_a_bounce_not_an_auto_reply() -> None:
    verdict = classify(_dsn("Auto-Submitted: auto-replied", "Precedence: bulk"), envelope_from="<>")
    assert verdict == Verdict(MailKind.BOUNCE, "delivery-status report")


def test_our_own_mail_with_auto_submitted_is_a_loop_not_an_auto_reply() -> None:
    raw = make_mail("Auto-Submitted: auto-generated", "X-Loop: qaflow@qaflow.localhost", "Precedence: list")
    assert classify(raw) == Verdict(MailKind.LOOP, "X-Loop: qaflow@qaflow.localhost")


def test_a_forwarded_bounce_from_a_person_is_a_post() -> None:
    dsn = _dsn()
    raw = make_mail(
        "Subject: Fwd: my notification bounced, why?",
        content_type='multipart/mixed; boundary="f1"',
        body=(
            "--f1\r\nContent-Type: text/plain\r\n\r\nSee the attached report.\r\n"
            "--f1\r\nContent-Type: message/rfc822\r\n\r\n" + dsn.decode() + "\r\n--f1--\r\n"
        ),
    )
    assert classify(raw).kind is MailKind.POST


def test_a_person_quoting_a_bounce_is_a_post() -> None:
    from email import message_from_bytes

    from flufl.bounce import all_failures

    raw = make_mail(
        "Subject: Re: Why do my notifications bounce?",
        body=(
            "My mail server sent me this, what does it mean?\r\n\r\n"
            "> This message was created automatically by mail delivery software.\r\n>\r\n"
            "> A message that you sent could not be delivered to one or more of its\r\n"
            "> recipients. The following addresses failed:\r\n>\r\n>   friend@example.org\r\n"
        ),
    )
    # flufl.bounce's heuristics alone would call it a bounce; nothing else says a mail system sent it.
    assert all_failures(message_from_bytes(raw))[1] == frozenset({b"friend@example.org"})
    assert classify(raw).kind is MailKind.POST


# ------------------------------------------------------------------------------------------------ loops


@pytest.mark.parametrize("value", ["qaflow@qaflow.localhost", "QAFlow@QAFLOW.localhost", "<qaflow@qaflow.localhost>"])
def test_our_x_loop_is_a_loop(value: str) -> None:
    assert classify(make_mail(f"X-Loop: {value}")).kind is MailKind.LOOP


def test_someone_elses_x_loop_is_not_ours() -> None:
    assert classify(make_mail("X-Loop: debian-ctte@lists.debian.org")).kind is MailKind.POST
    assert classify(make_mail("X-Loop: qaflow@other.example")).kind is MailKind.POST


@pytest.mark.parametrize(
    ("list_id", "kind"),
    [
        ('"Search" <search.qaflow.localhost>', MailKind.LOOP),
        ("<qaflow.localhost>", MailKind.LOOP),
        ("<Search.QAFlow.Localhost>", MailKind.LOOP),
        ("<search.notqaflow.localhost>", MailKind.POST),
        ("<search.qaflow.localhost.evil.example>", MailKind.POST),
    ],
)
def test_our_list_id(list_id: str, kind: MailKind) -> None:
    assert classify(make_mail(f"List-Id: {list_id}")).kind is kind


def test_a_message_id_we_minted_is_a_loop() -> None:
    ours = make_message_id("post", "1843", domain="qaflow.localhost", salt="")
    verdict = classify(make_mail(f"Message-ID: <{ours}>"))
    assert verdict == Verdict(MailKind.LOOP, f"our own Message-ID <{ours}>")
    assert classify(make_mail("Message-ID: <x@mail.qaflow.localhost>")).kind is MailKind.POST


def test_staff_mail_on_the_forums_own_domain_is_a_post() -> None:
    """Regression (defect 2): staff at the forum's domain write Message-IDs on it; only ids we mint are loops."""
    for mid in ("<CAH4x9=Kq1w@qaflow.localhost>", "<post-1843.9c2e0a1b2c@qaflow.localhost>",
                "<8f3e.5d1b@qaflow.localhost>"):
        assert classify(make_mail(f"Message-ID: {mid}")).kind is MailKind.POST, mid


def test_received_headers_beyond_the_limit_are_a_loop() -> None:
    hops = [
        f"Received: from r{i}.example.net by r{i + 1}.example.net; Mon, 11 Mar 2024 10:00:00 +0000" for i in range(5)
    ]
    assert classify(make_mail(*hops), max_received=5).kind is MailKind.POST
    verdict = classify(make_mail(*hops), max_received=4)
    assert verdict == Verdict(MailKind.LOOP, "5 Received headers (more than 4)")


# ---------------------------------------------------------------------------------------------- values


def test_verdict_is_a_frozen_value_and_kinds_are_strings() -> None:
    verdict = classify(make_mail())
    assert verdict == Verdict(MailKind.POST, "no sign of automatic mail")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.kind = MailKind.LOOP  # type: ignore[misc]
    assert [kind.value for kind in MailKind] == ["post", "auto_reply", "bounce", "loop"]
    assert f"{MailKind.AUTO_REPLY}" == "auto_reply"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage without headers",
        b"From: \r\nSubject: =?utf-8?q?broken\r\nContent-Type: multipart/report\r\n\r\nno boundary",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x\r\n"
        b"Content-Type: message/delivery-status\r\n\r\n\r\n--x--\r\n",
    ],
)
def test_odd_input_gets_a_verdict_without_raising(raw: bytes) -> None:
    assert isinstance(classify(raw, envelope_from=None), Verdict)


def test_list_markers_can_be_ignored_for_archive_imports() -> None:
    raw = (b"From: a@example.org\r\nTo: dev@lists.example.org\r\nSubject: Question\r\nPrecedence: bulk\r\n"
           b"Message-ID: <m1@example.org>\r\n\r\nA question written by a person.\r\n")
    parsed = parse_message(raw)
    common = {"envelope_from": "a@example.org", "our_domain": "forum.test", "our_list_id_suffix": ".forum.test",
              "max_received": 30, "is_bounce_address": False}
    assert classify_automatic(parsed, raw, **common).kind is MailKind.AUTO_REPLY
    assert classify_automatic(parsed, raw, list_markers_are_automatic=False, **common).kind is MailKind.POST
