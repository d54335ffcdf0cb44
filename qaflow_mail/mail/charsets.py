"""Bytes to text for mail parts and headers, whatever the declared (or missing, or wrong) charset. Pure.

Nothing here raises on bad input and nothing drops text silently: a byte sequence that no
decoder accepts is decoded with replacement characters and reported as lossy.
"""

from __future__ import annotations

import binascii
import codecs
import re
from dataclasses import dataclass

import charset_normalizer

__all__ = ["Decoded", "codec_for", "decode_base64", "decode_bytes", "decode_header", "recover_8bit"]

# Mail labels mapped to the Python codecs that read them best: the superset a sender's
# software most likely used (the WHATWG encoding standard makes the same choices).
_ALIASES: dict[str, tuple[str, ...]] = {
    "us-ascii": ("ascii",),
    "ascii": ("ascii",),
    "iso-8859-1": ("cp1252", "latin-1"),
    "latin1": ("cp1252", "latin-1"),
    "latin-1": ("cp1252", "latin-1"),
    "iso_8859-1": ("cp1252", "latin-1"),
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "x-gbk": ("gb18030",),
    "euc-cn": ("gb18030",),
    "cp936": ("gb18030",),
    "chinese": ("gb18030",),
    "big5": ("big5hkscs", "cp950"),
    "x-big5": ("big5hkscs", "cp950"),
    "big5-hkscs": ("big5hkscs", "cp950"),
    "cp950": ("cp950", "big5hkscs"),
    "iso-2022-jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_3"),
    "csiso2022jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2"),
    "shift_jis": ("cp932", "shift_jis_2004"),
    "shift-jis": ("cp932", "shift_jis_2004"),
    "sjis": ("cp932",),
    "x-sjis": ("cp932",),
    "windows-31j": ("cp932",),
    "euc-jp": ("euc_jp", "euc_jis_2004"),
    "ks_c_5601-1987": ("cp949",),
    "euc-kr": ("cp949",),
    "ks_c_5601": ("cp949",),
    "iso-8859-8-i": ("iso-8859-8",),
    "iso-8859-6-i": ("iso-8859-6",),
    "iso-8859-9": ("cp1254", "iso-8859-9"),
    "iso-8859-11": ("cp874",),
    "tis-620": ("cp874",),
    "windows-874": ("cp874",),
    "x-mac-roman": ("mac-roman",),
    "unicode-1-1-utf-7": ("utf-7",),
    "x-utf-7": ("utf-7",),
    "utf8": ("utf-8",),
    "unicode": ("utf-8",),
    "koi8-r": ("koi8-r", "koi8-u"),
    "koi8-u": ("koi8-u",),
}

# Labels that say nothing about the bytes.
_UNKNOWN_LABELS = frozenset({"", "x-unknown", "unknown", "unknown-8bit", "x-user-defined", "default", "charset"})

# Codecs that exist but must never be applied to untrusted mail: they are not charsets.
_FORBIDDEN_CODECS = frozenset(
    {"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined", "mbcs", "oem", "palmos"}
)

_SINGLE_BYTE_WESTERN = frozenset({"ascii", "cp1252", "latin-1", "iso8859-1", "iso8859-15", "cp1250", "cp1254"})


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    charset: str  # the Python codec that produced the text
    guessed: bool = False  # the declared charset was missing, unknown or wrong
    lossy: bool = False  # no decoder accepted every byte: replacement characters were inserted


# Below this many bytes statistical detection is mostly noise; Western text is the better bet.
_MIN_DETECT_BYTES = 32
_MULTIBYTE_PREFIXES = ("gb", "big5", "cp9", "euc", "shift", "iso2022", "hz")


def _is_usable(name: str) -> bool:
    try:
        info = codecs.lookup(name)
    except LookupError:
        return False
    return bool(getattr(info, "_is_text_encoding", True)) and info.name not in _FORBIDDEN_CODECS


def codec_for(label: str | None) -> tuple[str, ...]:
    """The Python codecs to try, in order, for a charset label from a mail (may be empty)."""
    if not label:
        return ()
    key = label.strip().strip("\"'").lower()
    if key in _UNKNOWN_LABELS:
        return ()
    if key in _ALIASES:
        return _ALIASES[key]
    candidates = [key]
    bare = re.sub(r"^(?:x-|cs)", "", key)
    candidates += [bare, bare.replace("_", "-"), re.sub(r"^(cp|windows|ibm)[-_]?", "cp", bare)]
    for candidate in candidates:
        if candidate in _ALIASES:
            return _ALIASES[candidate]
        if _is_usable(candidate):
            name = codecs.lookup(candidate).name
            return ("cp1252", "latin-1") if name == "iso8859-1" else (name,)
    return ()


def _strict(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _looks_utf8(data: bytes) -> str | None:
    """The UTF-8 reading of bytes that hold non-ASCII and are valid UTF-8 (a common mislabel)."""
    if data.isascii():
        return None
    return _strict(data, "utf-8")


def _detect(data: bytes) -> Decoded | None:
    best = charset_normalizer.from_bytes(data[:200_000]).best()
    if best is None or not best.encoding:
        return None
    text = _strict(data, best.encoding)
    return Decoded(text, best.encoding, guessed=True) if text is not None else None


def decode_bytes(data: bytes, declared: str | None = None) -> Decoded:
    """Decode a part's payload: the declared charset first, then UTF-8, then detection, then cp1252."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        declared = "utf-8"
    codecs_to_try = codec_for(declared)
    if data.isascii() and not _needs_stateful(codecs_to_try):
        return Decoded(data.decode("ascii"), "ascii")
    if codecs_to_try and codecs_to_try[0] in _SINGLE_BYTE_WESTERN:
        as_utf8 = _looks_utf8(data)
        if as_utf8 is not None:
            return Decoded(as_utf8, "utf-8", guessed=True)
    for codec in codecs_to_try:
        text = _strict(data, codec)
        if text is not None:
            return Decoded(text, codec)
    as_utf8 = _strict(data, "utf-8")
    if as_utf8 is not None:
        return Decoded(as_utf8, "utf-8", guessed=bool(codecs_to_try))
    if len(data) >= _MIN_DETECT_BYTES:
        detected = _detect(data)
        if detected is not None:
            return detected
    if codecs_to_try and codecs_to_try[0].startswith(_MULTIBYTE_PREFIXES):
        return Decoded(data.decode(codecs_to_try[0], errors="replace"), codecs_to_try[0], guessed=True, lossy=True)
    text = _strict(data, "cp1252")
    if text is not None:
        return Decoded(text, "cp1252", guessed=True)
    return Decoded(data.decode("latin-1"), "latin-1", guessed=True)


def _needs_stateful(codecs_to_try: tuple[str, ...]) -> bool:
    """ISO-2022, UTF-7 and HZ are pure ASCII on the wire; they must go through their codec."""
    return any(c.startswith(("iso2022", "utf-7", "hz")) for c in codecs_to_try)


def recover_8bit(value: str, fallback: str | None = None) -> str:
    """A header string read with surrogateescape (raw 8-bit bytes) turned into real text."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    raw = value.encode("utf-8", errors="surrogateescape")
    return decode_bytes(raw, fallback).text


# --- RFC 2047 encoded words ---------------------------------------------------------------

# The encoded text is `[^?]*` (RFC 2047 forbids "?" in it): an unbounded `.*?` looked for
# "?=" to the end of the value from every "=?", quadratic on a header full of openers.
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?]*)\?=")
# A header is decoded from its first 16 KB only; the rest is dropped. Real headers are far
# shorter (even a long References or To list is a few KB), and a longer one is an attack on
# the decoder, not something to show.
_MAX_HEADER_CHARS = 16 * 1024
_QP_HEX_RE = re.compile(rb"=([0-9A-Fa-f]{2})")


def _q_decode(encoded: str) -> bytes:
    raw = encoded.replace("_", " ").encode("latin-1", errors="replace")
    return _QP_HEX_RE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


_B64_CHUNK_RE = re.compile(rb"([A-Za-z0-9+/]+)=*")
_B64_JUNK_RE = re.compile(rb"[^A-Za-z0-9+/=]")
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on


def decode_base64(data: bytes | str) -> tuple[bytes, bool]:
    """Lenient base64: junk characters skipped, padding repaired, padded chunks concatenated. A str is read as its
    ASCII characters (any other is dropped, as by .encode("ascii", errors="ignore")).

    Returns (bytes, clean) where clean is False when anything had to be repaired or dropped.

    An attachment's encoded text is copied once (whitespace deleted) and a well-formed chunk is decoded where it
    lies: no list of its lines, no copy per chunk.
    """
    if isinstance(data, str):
        compact = data.encode("ascii", errors="ignore").translate(None, _ASCII_WHITESPACE)
    else:
        compact = data.translate(None, _ASCII_WHITESPACE)
    clean = True
    if _B64_JUNK_RE.search(compact) is not None:
        clean = False
        compact = _B64_JUNK_RE.sub(b"", compact)
    view = memoryview(compact)
    out: list[bytes] = []
    consumed = 0
    for match in _B64_CHUNK_RE.finditer(compact):
        start, end = match.span()
        if start != consumed:
            clean = False
        consumed = end
        letters = match.end(1) - start
        usable = letters - 1 if letters % 4 == 1 else letters  # one dangling character carries no full byte
        padding = -usable % 4
        if usable == letters and start + usable + padding == end:
            chunk: bytes | memoryview = view[start:end]  # padded as it should be: read as it is
        else:
            clean = False
            chunk = bytes(view[start:start + usable]) + b"=" * padding
        try:
            out.append(binascii.a2b_base64(chunk))
        except (binascii.Error, ValueError):
            clean = False
    if consumed != len(compact):
        clean = False
    return b"".join(out), clean


def _b_decode(encoded: str) -> bytes:
    return decode_base64(encoded)[0]


def decode_header(value: str, *, fallback: str | None = None) -> str:
    """Decode a header value: raw 8-bit bytes and RFC 2047 encoded words, tolerant of common breakage.

    Adjacent encoded words in the same charset are joined before decoding, so a multibyte
    character split across two words survives; whitespace between encoded words is dropped.
    Only the first 16 KB of the value is read (what follows is dropped).
    """
    value = recover_8bit(value[:_MAX_HEADER_CHARS], fallback)
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset: str | None = None
    position = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            out.append(decode_bytes(b"".join(pending), pending_charset).text)
        pending, pending_charset = [], None

    for match in _ENCODED_WORD_RE.finditer(value):
        between = value[position : match.start()]
        if between and (not pending or between.strip()):
            flush()
            out.append(between)
        charset = match.group(1).lower()
        payload = _b_decode(match.group(3)) if match.group(2) in "bB" else _q_decode(match.group(3))
        if pending and charset != pending_charset:
            flush()
        pending.append(payload)
        pending_charset = charset
        position = match.end()
    flush()
    out.append(value[position:])
    return "".join(out)


# NUL cannot be stored in a PostgreSQL text column (SQLite would keep it, invisibly), and a lone surrogate (an
# undecodable byte carried through surrogateescape) cannot be encoded as UTF-8 at all.
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
# In a one-line value (a subject, a name, a file name) no control character means anything.
_LINE_CONTROLS_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` without the characters a database text column cannot hold (NUL, lone surrogates)."""
    return _UNSTORABLE_RE.sub("", text)


def storable_line(text: str) -> str:
    """A one-line value without NUL, other control characters or lone surrogates (a tab becomes a space)."""
    return _LINE_CONTROLS_RE.sub("", text.replace("\t", " "))
