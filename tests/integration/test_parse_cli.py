"""`qaflow-mail parse FILE... [--json]`: what the gateway would make of each message, nothing stored. The JSON
contract: one object per file and line, in order, with fixed keys; a file that cannot be read gets its line
with "error"; exit 0 whenever every file could be read, whatever it held."""

from __future__ import annotations

import json
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from qaflow_mail.config import Settings, SiteSettings
from qaflow_mail.corpus.describe import JSON_KEYS, describe

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "mail"
DOMAIN = "qaflow.localhost"  # the domain the fixture mails were sent to
PDF = b"%PDF-1.4\n" + b"0" * 500 + b"\n%%EOF\n"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it."""
    env = {"PATH": "/usr/bin:/bin", "QAFLOW_SITE__DOMAIN": DOMAIN, "QAFLOW_TOKENS__SECRET": "parse-test",
           "QAFLOW_LOGGING__LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "qaflow_mail", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def html_reply_with_attachment(path: Path) -> Path:
    msg = EmailMessage()
    msg["From"] = "Alice Example <Alice@Example.org>"
    msg["To"] = f"general@{DOMAIN}"
    msg["Subject"] = "Re: Build fails on ARM"
    msg["Message-ID"] = "<answer-1@example.org>"
    msg["In-Reply-To"] = "<question-1@example.net>"
    msg["References"] = "<root@example.net> <question-1@example.net>"
    msg.set_content("Use the gold linker.\n\nOn Mon, 4 Mar 2024, Bob wrote:\n> The build fails on ARM.\n")
    msg.add_alternative(
        "<p>Use the <b>gold</b> linker.<script>alert(1)</script></p>"
        "<blockquote type=cite>The build fails on ARM.</blockquote>", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="../../build log.pdf")
    path.write_bytes(msg.as_bytes())
    return path


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_json_contract(tmp_path: Path) -> None:
    post = html_reply_with_attachment(tmp_path / "answer.eml")
    files = [post, FIXTURES / "auto_vacation_auto_submitted.eml", FIXTURES / "bounce_postfix_hard_5_1_1.eml",
             FIXTURES / "auto_loop_own_list_id.eml", FIXTURES / "bounce_postfix_delayed_4_4_1.eml"]
    result = cli("parse", "--json", *map(str, files))
    assert result.returncode == 0, result.stderr
    objects = lines(result)
    assert [o["file"] for o in objects] == [str(f) for f in files]
    for obj in objects:
        assert list(obj) == ["file", *JSON_KEYS]
    answer, vacation, hard, loop, delayed = objects
    assert answer == {
        "file": str(post),
        "message_id": "answer-1@example.org",
        "in_reply_to": "question-1@example.net",
        "references": ["root@example.net", "question-1@example.net"],
        "from": "alice@example.org",
        "subject": "Re: Build fails on ARM",
        "kind": "post",
        "body": "Use the gold linker.",
        "html": answer["html"],
        "attachments": [{"name": "build log.pdf", "type": "application/pdf", "size": len(PDF)}],
        "bounce": None,
    }
    assert "gold" in answer["html"] and "<script" not in answer["html"] and "fails on ARM" not in answer["html"]
    assert (vacation["kind"], vacation["bounce"]) == ("auto_reply", None)
    assert hard["kind"] == "bounce"
    assert hard["bounce"] == {"permanent": ["old.subscriber@example.net"], "temporary": []}
    assert delayed["kind"] == "bounce"
    assert delayed["bounce"]["permanent"] == [] and len(delayed["bounce"]["temporary"]) == 1
    assert loop["kind"] == "loop"


def test_unreadable_file_gets_its_line(tmp_path: Path) -> None:
    good = html_reply_with_attachment(tmp_path / "answer.eml")
    missing, folder = tmp_path / "missing.eml", tmp_path
    result = cli("parse", "--json", str(missing), str(good), str(folder))
    assert result.returncode == 1
    first, second, third = lines(result)
    assert set(first) == {"file", "error"} and first["file"] == str(missing)
    assert second["kind"] == "post"
    assert set(third) == {"file", "error"} and third["file"] == str(folder)


def test_any_bytes_it_can_read_exit_zero(tmp_path: Path) -> None:
    junk = [tmp_path / "empty.eml", tmp_path / "binary.eml", tmp_path / "headers-only.eml"]
    junk[0].write_bytes(b"")
    junk[1].write_bytes(bytes(range(256)) * 40)
    junk[2].write_bytes(b"Subject: =?utf-8?B?broken?=\r\nFrom: \xff\xfe <@>\r\nContent-Type: multipart/mixed\r\n")
    result = cli("parse", "--json", *map(str, junk))
    assert result.returncode == 0, result.stderr
    assert [o["kind"] for o in lines(result)] == ["post", "post", "post"]
    assert all("error" not in o for o in lines(result))


def test_text_output(tmp_path: Path) -> None:
    result = cli("parse", str(html_reply_with_attachment(tmp_path / "answer.eml")),
                 str(FIXTURES / "bounce_postfix_hard_5_1_1.eml"))
    assert result.returncode == 0, result.stderr
    assert "kind: post" in result.stdout and "| Use the gold linker." in result.stdout
    assert "attachment: build log.pdf (application/pdf" in result.stdout
    assert "bounce: permanent old.subscriber@example.net; temporary -" in result.stdout


def test_describe_on_the_bounce_address() -> None:
    settings = Settings(site=SiteSettings(domain=DOMAIN))
    verp = f"bounces+k7q2m4xw9zc3@{DOMAIN}"
    dsn = (FIXTURES / "bounce_postfix_hard_5_1_1.eml").read_bytes()
    vacation = (FIXTURES / "auto_vacation_auto_submitted.eml").read_bytes()
    assert describe(dsn, settings=settings, recipient=verp)["kind"] == "bounce"
    assert describe(vacation, settings=settings, recipient=verp)["kind"] == "auto_reply"
    assert describe(vacation, settings=settings)["kind"] == "auto_reply"
