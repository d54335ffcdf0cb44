"""What the gateway would make of one message, without storing it: the answer `qaflow-mail parse` prints and the
unit `qaflow-mail check-corpus` counts. Pure apart from `corpus_messages`, which reads a folder.

The message is judged as it would arrive over IMAP (no SMTP envelope: the Return-Path header stands in for
the envelope sender). A message addressed to our VERP address (the `recipient` argument, else Delivered-To or
X-Original-To) is judged as the bounce step judges it.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaflow_mail.config import Settings
from qaflow_mail.mail.attachments import safe_filename
from qaflow_mail.mail.automatic import MailKind, classify_automatic, read_verp_bounce
from qaflow_mail.mail.bounces import BounceReport, read_bounce, verp_token
from qaflow_mail.mail.content import Content, extract_content
from qaflow_mail.mail.parse import ParsedMail, parse_message

# The keys of one `parse --json` line besides "file", in order.
JSON_KEYS = ("message_id", "in_reply_to", "references", "from", "subject", "kind", "body", "html", "attachments",
             "bounce")

_NO_FAILURES = BounceReport(frozenset(), frozenset(), "")


@dataclass(frozen=True, slots=True)
class Description:
    parsed: ParsedMail
    kind: MailKind
    reason: str  # why this kind (the sign that decided)
    content: Content
    bounce: BounceReport | None  # failed recipients when kind is BOUNCE

    def to_json(self) -> dict[str, Any]:
        parsed = self.parsed
        bounce = None
        if self.bounce is not None:
            bounce = {"permanent": sorted(self.bounce.permanent), "temporary": sorted(self.bounce.temporary)}
        return {
            "message_id": parsed.message_id,
            "in_reply_to": parsed.in_reply_to[0] if parsed.in_reply_to else None,
            "references": list(parsed.references),
            "from": parsed.from_address or None,
            "subject": parsed.subject,
            "kind": self.kind.value,
            "body": self.content.text,
            "html": self.content.html,
            "attachments": [
                {"name": safe_filename(att.filename), "type": att.content_type, "size": att.size}
                for att in parsed.attachments
            ],
            "bounce": bounce,
        }


def _to_bounce_address(parsed: ParsedMail, recipient: str | None, domain: str) -> bool:
    candidates = [recipient] if recipient else [*parsed.header_all("Delivered-To"), *parsed.header_all("X-Original-To")]
    return any(verp_token(address, domain=domain) is not None for address in candidates)


def describe_message(raw: bytes, *, settings: Settings, recipient: str | None = None) -> Description:
    parsed = parse_message(raw)
    content = extract_content(parsed)
    domain = settings.site.domain
    if _to_bounce_address(parsed, recipient, domain):
        report = read_verp_bounce(parsed, raw, null_sender=False)
        if report is None:
            return Description(parsed, MailKind.AUTO_REPLY, "sent to the bounce address, not a bounce", content, None)
        return Description(parsed, MailKind.BOUNCE, "sent to the bounce address", content, report)
    verdict = classify_automatic(
        parsed,
        raw,
        envelope_from=None,
        our_domain=domain,
        our_list_id_suffix=f".{domain}",
        max_received=settings.limits.max_received_headers,
        is_bounce_address=False,
    )
    bounce = None
    if verdict.kind is MailKind.BOUNCE:
        bounce = read_bounce(raw) or _NO_FAILURES
    return Description(parsed, verdict.kind, verdict.reason, content, bounce)


def describe(raw: bytes, *, settings: Settings, recipient: str | None = None) -> dict[str, Any]:
    """The `parse --json` object for one message (without "file")."""
    return describe_message(raw, settings=settings, recipient=recipient).to_json()


# --- reading a folder of real mail ------------------------------------------------------------------------------

# Folders of answer keys whose files are reply bodies or HTML fragments, not RFC 5322 messages.
BODY_ONLY_FOLDERS = (("email_reply_parser",), ("email_reply_trimmer",), ("talon", "signature"))
_NOT_MAIL_SUFFIXES = frozenset({".md", ".json", ".tsv", ".html", ".py", ".rb", ".csv"})
_NOT_MAIL_NAMES = frozenset({"readme", "license", "copying"})


def _in_body_only_folder(parts: tuple[str, ...]) -> bool:
    return any(
        parts[i : i + len(folder)] == folder for folder in BODY_ONLY_FOLDERS for i in range(len(parts) - len(folder))
    )


def _is_message_file(path: Path, root: Path) -> bool:
    name = path.name
    if name.startswith(".") or name.endswith("_reply_text"):
        return False
    if name.lower().split(".", 1)[0] in _NOT_MAIL_NAMES or path.suffix.lower() in _NOT_MAIL_SUFFIXES:
        return False
    # Folder names count from the root's own name: checking an answer-key folder itself finds no messages.
    return not _in_body_only_folder(path.relative_to(root.parent).parts)


def _is_mbox(path: Path) -> bool:
    if path.suffix.lower() == ".mbox":
        return True
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def corpus_messages(root: Path) -> Iterator[tuple[str, bytes]]:
    """(label, raw) for every message under `root`, in a stable order: single files (.eml, .txt, Maildir names
    such as `cur/29:2,`) and each message of an mbox, labelled `file.mbox#3`. Answer keys are left out."""
    root = root.resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        if not _is_message_file(path, root):
            continue
        label = path.name if path == root else path.relative_to(root).as_posix()
        if _is_mbox(path):
            box = mailbox.mbox(path, create=False)
            try:
                for number, key in enumerate(box.iterkeys(), start=1):
                    yield f"{label}#{number}", box.get_bytes(key)
            finally:
                box.close()
        else:
            yield label, path.read_bytes()
