"""Attachment names made safe to store, attachment types checked against their bytes. Pure."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping

from qaflow_mail.mail.parse import Attachment

__all__ = [
    "DEFAULT_ALLOWED_TYPES", "check_attachment", "executable_reason", "inline_cid_map", "safe_filename", "sniff_type",
]

MAX_FILENAME_CHARS = 120
_MAX_EXTENSION_CHARS = 16
_FALLBACK_NAME = "attachment"

# Types a Q&A post may carry when the caller names none: pictures, documents, archives, source and text files.
DEFAULT_ALLOWED_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "text/*",
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-gtar",
        "application/x-gtar-compressed",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/json",
        "application/xml",
        "application/x-yaml",
        "application/sql",
        "application/x-ruby",
        "application/x-python",
        "application/x-patch",
        "application/pgp-keys",
        "application/octet-stream",
        "message/rfc822",
        "application/rtf",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
    }
)
# Types that run script when a browser opens them: a wildcard never admits them, only an explicit entry.
_SCRIPT_CAPABLE = frozenset({"text/html", "image/svg+xml", "application/xhtml+xml", "text/xml"})

_EXECUTABLE_EXTENSIONS = frozenset(
    {
        "exe",
        "com",
        "bat",
        "cmd",
        "scr",
        "pif",
        "msi",
        "msp",
        "msc",
        "cpl",
        "dll",
        "sys",
        "jar",
        "js",
        "jse",
        "vbs",
        "vbe",
        "wsf",
        "wsh",
        "ps1",
        "psm1",
        "hta",
        "lnk",
        "reg",
        "inf",
        "scf",
        "gadget",
        "application",
        "appx",
        "msix",
        "apk",
        "app",
        "dmg",
        "pkg",
        "deb",
        "rpm",
        "command",
        "elf",
        "bin",
        "run",
        "iso",
        "img",
        "vhd",
        "vhdx",
        "chm",
        "xll",
        "docm",
        "xlsm",
        "pptm",
    }
)
_EXECUTABLE_TYPES = frozenset(
    {
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-dosexec",
        "application/x-executable",
        "application/x-sharedlib",
        "application/x-mach-binary",
        "application/vnd.microsoft.portable-executable",
        "application/x-sh",
        "application/x-shellscript",
        "application/javascript",
        "text/javascript",
        "application/x-ms-installer",
        "application/java-archive",
        "application/hta",
        "application/x-bat",
    }
)

# Magic numbers: (prefix, type) checked at offset 0.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),
    (b"MZ", "application/x-msdownload"),
    (b"\x7fELF", "application/x-executable"),
    (b"\xca\xfe\xba\xbe", "application/x-mach-binary"),
    (b"\xfe\xed\xfa\xce", "application/x-mach-binary"),
    (b"\xfe\xed\xfa\xcf", "application/x-mach-binary"),
    (b"\xce\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
)
_EXECUTABLE_SNIFFED = frozenset({"application/x-msdownload", "application/x-executable", "application/x-mach-binary"})
# Declared types whose bytes must carry their own magic number.
_MUST_MATCH = {
    "image/png": "image/png",
    "image/jpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/gif": "image/gif",
    "image/webp": "image/webp",
    "application/pdf": "application/pdf",
    "application/zip": "application/zip",
    "application/x-zip-compressed": "application/zip",
}
_ZIP_CONTAINERS = (
    "application/vnd.openxmlformats-officedocument.",
    "application/vnd.oasis.opendocument.",
    "application/epub+zip",
)

_RESERVED_WINDOWS = re.compile(r"^(?:con|prn|aux|nul|com[0-9]|lpt[0-9])(?:\..*)?$", re.IGNORECASE)
_UNSAFE_CHARS = re.compile(r'[<>:"|?*\\/]')
_WHITESPACE = re.compile(r"\s+")


def safe_filename(name: str) -> str:
    """A file name safe to store and serve: no directories, controls or leading dots; extension kept."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
    name = _WHITESPACE.sub(" ", _UNSAFE_CHARS.sub("_", name)).strip()
    name = name.lstrip(". ").rstrip(". ")
    if not name:
        return _FALLBACK_NAME
    if _RESERVED_WINDOWS.match(name):
        name = "_" + name
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and 0 < len(extension) <= _MAX_EXTENSION_CHARS:
            name = stem[: MAX_FILENAME_CHARS - len(extension) - 1].rstrip(". ") + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS].rstrip(". ")
    return name or _FALLBACK_NAME


def sniff_type(content: bytes) -> str | None:
    """The type the bytes themselves announce, for the few formats we check; None when unknown."""
    head = content[:16]
    for prefix, ctype in _MAGIC:
        if head.startswith(prefix):
            return ctype
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if b"%PDF-" in content[:1024]:
        return "application/pdf"
    return None


def _extensions(filename: str) -> list[str]:
    """Every dotted suffix, lowercased: "report.pdf.exe" gives ["pdf", "exe"]."""
    parts = filename.lower().strip().rstrip(". ").split(".")
    return [p.strip() for p in parts[1:]]


def _type_allowed(ctype: str, allowed: Collection[str]) -> bool:
    if ctype in allowed:
        return True
    if ctype in _SCRIPT_CAPABLE:
        return False
    major = ctype.split("/", 1)[0]
    return f"{major}/*" in allowed or "*/*" in allowed


def executable_reason(att: Attachment) -> str | None:
    """Why this attachment is a program (by its bytes, its declared type or its file extension), or None."""
    declared = att.content_type.lower().strip()
    extensions = _extensions(att.filename)
    if sniff_type(att.content) in _EXECUTABLE_SNIFFED or declared in _EXECUTABLE_TYPES:
        return f"{att.filename!r} is an executable program"
    if extensions and extensions[-1] in _EXECUTABLE_EXTENSIONS:
        return f"{att.filename!r} has an executable file extension (.{extensions[-1]})"
    return None


def check_attachment(att: Attachment, *, allowed_types: Collection[str] | None = None) -> str | None:
    """Why this attachment is refused, or None when it may be kept.

    `allowed_types` holds MIME types ("image/png") or wildcards ("image/*"); None means
    DEFAULT_ALLOWED_TYPES. Executables are refused whatever is allowed, and a declared type
    whose bytes say otherwise (an .exe sent as image/png) is refused as a lie.
    """
    allowed = DEFAULT_ALLOWED_TYPES if allowed_types is None else allowed_types
    declared = att.content_type.lower().strip()
    sniffed = sniff_type(att.content)
    executable = executable_reason(att)
    if executable is not None:
        return executable
    expected = _MUST_MATCH.get(declared)
    if expected is not None and att.content and sniffed != expected:
        return f"{att.filename!r} is declared {declared} but its content is not"
    if declared.startswith(_ZIP_CONTAINERS) and att.content and sniffed != "application/zip":
        return f"{att.filename!r} is declared {declared} but its content is not"
    effective = sniffed if declared == "application/octet-stream" and sniffed else declared
    if not _type_allowed(effective, allowed):
        return f"{att.filename!r}: attachments of type {effective} are not accepted"
    return None


def inline_cid_map(attachments: Iterable[Attachment]) -> Mapping[str, Attachment]:
    """Content-ID (without <>) to attachment, for resolving <img src="cid:..."> in HTML bodies."""
    found: dict[str, Attachment] = {}
    for att in attachments:
        cid = att.content_id.strip().strip("<>").strip() if att.content_id else None
        if cid:
            found.setdefault(cid, att)
            found.setdefault(cid.lower(), att)
    return found
