"""DKIM signatures on the mail the gateway sends itself (dkimpy, relaxed/relaxed), and the key's DNS record.

Signing is on when `[dkim] selector` and `private_key_file` are set; otherwise the MTA is expected to sign.
The d= domain is `[site] domain`, the domain of every From: we write. The signed headers are those mailbox
providers weigh (From, To, Subject, Date, Message-ID) and every List-* header, so a changed unsubscribe link
breaks the signature.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dkim

from qaflow_mail.config import ConfigError, Settings

if TYPE_CHECKING:
    from qaflow_mail.outbound.mailer import Mailer

CANONICALIZATION = (b"relaxed", b"relaxed")
BASE_HEADERS = ("From", "To", "Subject", "Date", "Message-ID")
# Also signed when the message has them: the thread and reply headers a forger would like to change.
OPTIONAL_HEADERS = ("Reply-To", "In-Reply-To", "References", "MIME-Version", "Content-Type")
KEY_BITS = 2048
OPENSSL = "openssl"


class DkimKeyError(ConfigError):
    """The configured key cannot be read or used; the message names the file."""


def headers_to_sign(raw: bytes) -> list[bytes]:
    """The header names to sign in `raw`: the base set (From first, as dkimpy requires), the optional ones
    present, and every List-* header present."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    present = {name.lower(): name for name in parsed}
    names = list(BASE_HEADERS)
    names += [name for name in OPTIONAL_HEADERS if name.lower() in present]
    names += sorted({name for lower, name in present.items() if lower.startswith("list-")})
    return [name.encode("ascii") for name in names]


@dataclass(frozen=True, slots=True)
class DkimSigner:
    selector: str
    domain: str
    private_key: bytes

    def sign(self, raw: bytes) -> bytes:
        """`raw` with a DKIM-Signature header in front."""
        signature = dkim.sign(
            raw, self.selector.encode("ascii"), self.domain.encode("ascii"), self.private_key,
            canonicalize=CANONICALIZATION, include_headers=headers_to_sign(raw),
        )
        return bytes(signature) + raw


def load_signer(settings: Settings) -> DkimSigner | None:
    """The signer for the configured key, or None when signing is left to the MTA."""
    if not settings.dkim.enabled:
        return None
    path = Path(settings.dkim.private_key_file)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"[dkim] private_key_file {path}: {exc.strerror or exc}") from None
    signer = DkimSigner(settings.dkim.selector, settings.site.domain.lower().rstrip("."), key)
    try:
        signer.sign(b"From: check@" + signer.domain.encode() + b"\r\nSubject: key check\r\n\r\nx\r\n")
    except dkim.DKIMException as exc:
        raise DkimKeyError(f"[dkim] private_key_file {path} is not a usable RSA key: {exc}") from None
    return signer


def with_signing(mailer: Mailer, settings: Settings) -> Mailer:
    """`mailer`, signing with the configured DKIM key when there is one."""
    signer = load_signer(settings)
    return mailer if signer is None else SigningMailer(mailer, signer)


class SigningMailer:
    """A Mailer that signs each message before handing it to the real one."""

    def __init__(self, inner: Mailer, signer: DkimSigner) -> None:
        self.inner = inner
        self.signer = signer

    async def send(self, envelope_from: str, recipient: str, raw: bytes) -> None:
        signed = await asyncio.to_thread(self.signer.sign, raw)
        await self.inner.send(envelope_from, recipient, signed)

    async def close(self) -> None:
        await self.inner.close()


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run([OPENSSL, *args], input=stdin, capture_output=True, check=False, timeout=120)
    except FileNotFoundError:
        raise DkimKeyError("the openssl program is needed for DKIM keys and was not found") from None
    if done.returncode != 0:
        raise DkimKeyError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def generate_key(path: Path, *, bits: int = KEY_BITS) -> None:
    """A new RSA private key at `path` (PEM, readable by its owner only); an existing file is never replaced."""
    if path.exists():
        raise DkimKeyError(f"{path} exists already: remove it first if you mean to replace the key")
    pem = _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def public_key_record(private_key_file: Path) -> str:
    """The TXT value to publish at <selector>._domainkey.<domain> for the key in `private_key_file`."""
    der = _openssl("pkey", "-in", str(private_key_file), "-pubout", "-outform", "DER")
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain.lower().rstrip('.')}"
