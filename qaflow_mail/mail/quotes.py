"""Trims quoted history, "On … wrote:" lines and signatures from a reply body. Pure.

The approach follows Discourse's email_reply_trimmer (MIT): each line is classified as
empty / delimiter / signature / embedded-mail marker / mail header / quote / text, giving
a one-letter-per-line pattern string, and a handful of rules over that string decide which
lines are the visible reply. The rules are evaluated with explicit scans rather than
backtracking regexes, so the cost stays linear in the number of lines.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "EMBEDDED",
    "FORWARD_INTRODUCTIONS",
    "FORWARD_SEPARATORS",
    "ORIGINAL_SEPARATORS",
    "classify_line",
    "is_signature_only",
    "split_reply",
    "trim_reply",
]

EMPTY = "e"
DELIMITER = "d"
SIGNATURE = "s"
EMBEDDED = "b"
EMAIL_HEADER = "h"
QUOTE = "q"
TEXT = "t"

# Lines longer than this are never markers, headers or signatures; skipping the costly
# classifiers for them keeps a pathological single-line body linear.
_MAX_MARKER_LINE = 1000

# POSIX [[:blank:]] in Unicode mode: tab plus every space separator (NBSP included).
_B = r" \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
_BLANK = "[{B}]"
_I = re.IGNORECASE
_WRAPPED = re.IGNORECASE | re.MULTILINE | re.DOTALL  # markers that may be wrapped over lines


def _rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """Compile, with {B} standing for the blank class (so patterns keep their own braces)."""
    return re.compile(pattern.replace("{B}", _B), flags)


def _compile_all(patterns: Iterable[str], flags: int = 0) -> tuple[re.Pattern[str], ...]:
    return tuple(_rx(p, flags) for p in patterns)


# --- line classifiers -----------------------------------------------------------------

_EMPTY_RE = _rx(rf"^{_BLANK}*$")
_DELIMITER_RE = _rx(rf"^{_BLANK}*[-_,=+~#*ᐧ—]+{_BLANK}*$")
_QUOTE_RE = _rx(rf"^{_BLANK}*>")
# A forum's own "reply above this line" marker in the quoted notification: nothing below it is the reply.
_REPLY_ABOVE_RE = _rx(
    r"(?:reply above this line|oberhalb dieser zeile|au-dessus de cette ligne|"
    r"encima de esta línea|boven deze regel)",
    _I,
)
_MARKDOWN_LINK_RE = _rx(r"\[([^\]]+)\]\([^)]+\)")

_SIGNATURE_RES = _compile_all(
    (
        rf"^{_BLANK}*{p}"
        for p in (
            r"從我的 iPhone 傳送",  # zh
            r"\w+ from mobile",  # en
            r"[(<]*Sent (?:from|via|with|by) .+[)>]*",
            r"From my .{1,20}",
            r"Get Outlook for ",
            r"Envoyé (?:depuis|de) (?:mon|Yahoo Mail)",  # fr
            r"Von meinem .+ gesendet",  # de
            r"Diese Nachricht wurde von .+ gesendet",
            r"Inviato da ",  # it
            r"Sendt fra min ",  # no / da
            r"Enviado do meu ",  # pt
            r"Enviado desde mi ",  # es
            r"Verzonden met ",  # nl
            r"Verstuurd vanaf mijn ",
            r"Skickat från min ",  # sv
            r"från min ",
            r"Отправлено с ",  # ru
            r"iPhoneから送信",  # ja
        )
    ),
    _I,
)

# "On <date>, <someone> wrote:" and its translations. They are matched on the whole text
# too (DOTALL), to re-join a marker that a mail client wrapped over several lines; the
# span between the two words is bounded so that a text full of "On ..." lines stays linear.
_SPAN = "{1,400}?"
_ON_DATE_SOMEONE_WROTE = (
    # zh
    r"^[{B}<>-]*在 (?:(?!\b(?>在|写道)\b).)SPAN写道[{B}.:：>-]*$",
    # nl
    r"^[{B}<>-]*Op (?:(?!\b(?>Op|het\svolgende\sgeschreven|schreef)\b).)SPAN"
    r"(?:het\svolgende\sgeschreven|schreef[^:]+)[{B}.:>-]*$",
    # en
    r"^[{B}<>-]*In message (?:(?!\b(?>In message|writes)\b).)SPANwrites[{B}.:>-]*$",
    r"^[{B}<>-]*(?:On|At) (?:(?!\b(?>On|wrote|writes|says|said)\b).)SPAN(?:wrote|writes|says|said)[{B}.:>-]*$",
    # fr
    r"^[{B}<>-]*Le (?:(?!\b(?>Le|nous\sa\sdit|a\s+écrit)\b).)SPAN(?:nous\sa\sdit|a\s+écrit)[{B}.:>-]*$",
    # de
    r"^[{B}<>-]*Am (?:(?!\b(?>Am|schrieben\sSie)\b).)SPANschrieben\sSie[{B}.:>-]*$",
    r"^[{B}<>-]*Am (?:(?!\b(?>Am|geschrieben)\b).)SPAN(?:geschrieben|schrieb[^:]+)[{B}.:>-]*$",
    # it
    r"^[{B}<>-]*Il (?:(?!\b(?>Il|ha\sscritto)\b).)SPANha\sscritto[{B}.:>-]*$",
    # pl / sk
    r"^[{B}<>-]*(?:Dnia|Dňa) (?:(?!\b(?>Dnia|Dňa|napisał)\b).)SPANnapisał(?:\(a\))?[{B}.:>-]*$",
    # cs / sk
    r"^[{B}<>-]*Dne (?:(?!\b(?>Dne|napsal|napísal)\b).)SPAN(?:napsal|napísal)(?:\(a\))?[{B}.:>-]*$",
    # pt
    r"^[{B}<>-]*Em (?:(?!\b(?>Em|escreveu)\b).)SPANescreveu[{B}.:>-]*$",
    # es
    r"^[{B}<>-]*El (?:(?!\b(?>El|escribió)\b).)SPANescribió[{B}.:>-]*$",
)
_ON_DATE_SOMEONE_WROTE_RES = _compile_all((p.replace("SPAN", _SPAN) for p in _ON_DATE_SOMEONE_WROTE), _WRAPPED)

# "Am 18.09.2013 um 16:24 schrieb Someone <x@example.com>:"
_ON_DATE_WROTE_SOMEONE_RES = _compile_all(
    rf"^[{{B}}>]*{on}\s.+\s{wrote}\s[^:]+:"
    for on, wrote in (("Op", "schreef"), ("Am", "schrieb"), ("Den", "skrev"), (r"søn\.", "skrev"))
)

# "Max <x@example.com> schrieb am Fr., 28. Apr. 2017 um 11:53 Uhr:" (the date may be wrapped
# onto the next line: then the colon is looked for in the next 300 characters only).
_SOMEONE_WROTE_ON_DATE_RES = _compile_all(
    (
        r"^.+\bwrote\b\s+\bon\b(?:.+[^:\n]:|[^\n]{2,}\n[^:]{0,300}:)",
        r"^.+\bschrieb\b\s+\bam\b(?:.+[^:\n]:|[^\n]{2,}\n[^:]{0,300}:)",
    ),
    re.MULTILINE,
)
_SOMEONE_WROTE_ON_DATE_NEEDLES = ("wrote", "schrieb")


class _Marker:
    """A pattern that is only tried on a line (or pair of lines) holding all of its needles."""

    __slots__ = ("needles", "regex")

    def __init__(self, pattern: str, needles: tuple[str, ...], flags: int = 0) -> None:
        self.regex = _rx(pattern, flags | re.MULTILINE)
        self.needles = needles

    def may_match(self, lowered: str) -> bool:
        return all(n in lowered for n in self.needles)


# Lines that open a forwarded message, as mail clients write them in their languages (Gmail and Thunderbird
# between dashes, Apple Mail as "Begin forwarded message:"), and Outlook's "-----Original Message-----" that
# opens a replied-to or a forwarded message alike. mail.forwards uses them to find a forwarded part.
FORWARD_SEPARATORS = (
    "Forwarded message", "Forwarded Message", "Weitergeleitete Nachricht", "Message transféré", "Mensaje reenviado",
    "Messaggio inoltrato", "Mensagem encaminhada", "Mensagem reencaminhada", "Doorgestuurd bericht",
    "Vidarebefordrat meddelande", "Videresendt meddelelse", "Videresendt besked", "Videresendt melding",
    "Välitetty viesti", "Wiadomość przekazana dalej", "Przekazana wiadomość", "Přeposlaná zpráva",
    "Пересылаемое сообщение", "Пересланное сообщение", "İletilen ileti", "İletilmiş ileti", "転送されたメッセージ",
    "转发的邮件", "轉寄的郵件", "전달된 메시지", "Thư đã chuyển tiếp", "Tin nhắn đã chuyển tiếp",
)
ORIGINAL_SEPARATORS = (
    "Original Message", "Reply Message", "Ursprüngliche Nachricht", "Antwort Nachricht", "Message d'origine",
    "Message original", "Mensaje original", "Messaggio originale", "Mensagem original", "Oorspronkelijk bericht",
    "Origineel bericht", "Ursprungligt meddelande", "Originalmeddelande", "Oprindelig meddelelse",
    "Opprinnelig melding", "Alkuperäinen viesti", "Oryginalna wiadomość", "Wiadomość oryginalna", "Původní zpráva",
    "Исходное сообщение", "Оригинальное сообщение", "Özgün ileti", "Orijinal mesaj", "元のメッセージ",
    "原始邮件", "原始郵件", "邮件原件", "원본 메시지", "Thư gốc", "Tin nhắn gốc",
)
FORWARD_INTRODUCTIONS = (
    "Begin forwarded message",
    "Début du message transféré",
    "Anfang der weitergeleiteten (?:Nachricht|E-Mail)",
    "Inicio del mensaje reenviado", "Inizio messaggio inoltrato", "Início da mensagem reencaminhada",
    "Começo da mensagem encaminhada",
    "Begin doorgestuurd bericht",
    "Vidarebefordrat brev",
    "Start på videresendt (?:besked|e-post|melding)",
    "Välitetty viesti alkaa", "Początek przekazywanej wiadomości", "Začátek přeposlané zprávy",
    "Начало переадресованного (?:сообщения|письма)", "İletilen ileti başlangıcı", "転送されたメッセージ",
    "以下是转发的邮件", "轉寄的郵件開始", "전달된 메시지 시작",
)
_ANDROID_WROTE = (
    "wrote|schrieb|a écrit|escribió|ha scritto|escreveu|schreef|skrev|kirjoitti|napisał|napsal|написал|yazdı"
)

# "On <date>, <someone> wrote:" as more clients and languages write it. Each is tried only on a line holding its
# needle; each has at most one unbounded-free lazy run before a fixed word, so a hostile line stays linear.
_HAS_DIGIT = r"(?=[^\n]{0,300}[0-9])"
_MORE_ATTRIBUTIONS = (
    # en: "On 11-Apr-2011, at 6:54 PM, Roman <r@example.com> sent:"
    _Marker(r"^[{B}<>-]*On [^\n]{1,400}? sent[{B}]*:[{B}]*$", ("sent",)),
    # sv / da / no: "Den 14 september, 2015 02:23:18, Valentino (v@rudy.be) skrev:", "På … skrev:",
    # Gmail without "Den": "mån 1 jan. 2024 kl 10:00 skrev John Doe <john@example.com>:"
    _Marker(rf"^[{{B}}>]*{_HAS_DIGIT}[^\n]{{1,300}}? skrev(?: [^\n:]{{1,200}})?[{{B}}]*:[{{B}}]*$", ("skrev",)),
    # fi: "ma 1.1.2024 klo 10.00 John Doe <john@example.com> kirjoitti:", "John Doe kirjoitti 1.1.2024 klo 10.00:"
    _Marker(
        rf"^[{{B}}>]*{_HAS_DIGIT}[^\n]{{1,300}}?\bkirjoitti(?: [^\n:]{{1,100}})?[{{B}}]*:[{{B}}]*$", ("kirjoitti",)
    ),
    # pl (Thunderbird): "W dniu 1.01.2024 o 10:00, John Doe pisze:"
    _Marker(r"^[{B}>]*W dniu [^\n]{1,300}? (?:pisze|napisał(?:\(a\))?)[{B}]*:[{B}]*$", ("w dniu",), _I),
    # cs (Gmail): "po 1. 1. 2024 v 10:00 odesílatel John Doe <john@example.com> napsal:"
    _Marker(r"^[{B}>]*[^\n]{1,200}? odesílatel [^\n]{1,200}? napsal(?:\(a\))?[{B}]*:[{B}]*$", ("odesílatel",)),
    # ru (Thunderbird): "01.01.2024 10:00, John Doe пишет:"
    _Marker(rf"^[{{B}}>]*{_HAS_DIGIT}[^\n]{{1,300}}? пишет[{{B}}]*:[{{B}}]*$", ("пишет",)),
    # tr: "John Doe <john@example.com>, 1 Oca 2024 Pzt, 10:00 tarihinde şunu yazdı:"
    _Marker(r"^[{B}>]*[^\n]{1,300}? (?:şunu )?yazdı[{B}]*:[{B}]*$", ("yazdı",)),
    # ko: "2024년 1월 1일 (월) 오전 10:00, John Doe <john@example.com>님이 작성:"
    _Marker(r"^[{B}>]*[^\n]{1,300}?님이 작성(?:하였습니다|했습니다)?[{B}]*:[{B}]*$", ("님이 작성",)),
    # vi: "Vào Th 2, 1 thg 1, 2024 vào lúc 10:00 John Doe <john@example.com> đã viết:"
    _Marker(r"^[{B}>]*[^\n]{1,300}? đã viết[{B}]*:[{B}]*$", ("đã viết",)),
    # pt-PT (Gmail): "Às 10:00 de 01/01/2024, John Doe <john@example.com> escreveu:"
    _Marker(rf"^[{{B}}>]*{_HAS_DIGIT}[^\n]{{1,300}}? escreveu[{{B}}]*:[{{B}}]*$", ("escreveu",)),
    # ja (Gmail): "2024年1月1日(月) 10:00 John Doe <john@example.com>:"
    _Marker(r"^[{B}>]*[0-9]{4}年[0-9]{1,2}月[0-9]{1,2}日[^\n]{1,200}?[:：][{B}]*$", ("年", "月", "日")),
)


# "суббота, 14 марта 2015 г. пользователь X написал:", "23 mar 2017 21:25 X napisał(a):",
# "2015-10-18 0:17 GMT+03:00 Matt <x@example.com>:", "вт, 5 янв. 2016 г. в 23:39, X <x@y.org>:"
_DATE_SOMEONE_MARKERS = (
    _Marker(r"[0-9]{4}.{1,80}пользователь.{0,80}\n?.{0,80}?написал(?:\(а\))?:", ("написал",)),
    _Marker(r"[0-9]{4}.{1,80}\n?.{0,80}?napisał\(a\):", ("napisał(a):",)),
    _Marker(r"[0-9]{4}.{1,80}\n?.{0,80}?пише:", ("пише:",)),
    _Marker(r"[0-9]{4}.{1,120}?написал(?:\(а\))?:[{B}]*$", ("написал",)),
    _Marker(r"[0-9]{4}.{1,80}\s?<[^@<>]+@[^@<>.]+\.[^@<>]+>:?$", ("@", ">")),
)

_OTHER_MARKERS = (
    # "2016-03-03 17:21 GMT+01:00 Some One"
    _Marker(r"^[{B}>]*20[0-9]{2}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2} GMT\+[0-9]{2}:[0-9]{2} [\w \t]+$", ("gmt+",)),
    # "someone via Discourse Meta wrote:"
    _Marker(r"^.+ via .+ wrote:?[{B}]*$", (" via ", "wrote")),
    _Marker(r"^.+ via .+ schrieb:?[{B}]*$", (" via ", "schrieb")),
    # "Some One <x@example.com> wrote:"
    # (the address is matched from the start of its run only, so a long dotted word stays linear)
    _Marker(r"^.+?(?<![\w.+-])[\w.+-]++@[\w.-]+\.\w{2,}\b.+wrote:?$", ("@", "wrote")),
    # "Posted by someone on 01/21/2016"
    _Marker(r"^[{B}>]*Posted by .+ on [0-9]{2}/[0-9]{2}/[0-9]{4}$", ("posted by",), _I),
    # ja: "2016/03/03 17:21、Some One <x@example.com> のメール:"
    _Marker(r"^[{B}>]*[0-9]{4}.{1,80}(?:のメール|は書きました)[:：]?[{B}]*$", ()),
    # cs: "Richard Jones píše v Út 24. 07. 2012 v 20:48 +0100:"
    _Marker(r"^[{B}>]*.{1,120}? píše v .{1,80}:[{B}]*$", ("píše v",)),
    # zh (Gmail): "John Doe <john@example.com> 于2024年1月1日周一 10:00写道："
    _Marker(r"^[{B}>]*.{1,200}?(?:写道|寫道)[{B}]*[:：][{B}]*$", ("道",)),
    # forwarded / original message separators
    _Marker(rf"^[{{B}}>]*(?:{'|'.join(FORWARD_INTRODUCTIONS)})[{{B}}]*[:：]", (), _I),
    _Marker(
        rf"^[{{B}}>*]*-{{2,}}[{{B}}]*(?:{'|'.join((*FORWARD_SEPARATORS, *ORIGINAL_SEPARATORS))})[{{B}}]*-{{2,}}", (), _I
    ),
    # Android: "---- John Smith wrote ----", "---- Am 1. Jan. schrieb John ----"
    _Marker(rf"^[{{B}}>]*-{{2,}}[{{B}}]*[^\n]{{1,300}}?\b(?:{_ANDROID_WROTE})[{{B}}]*-{{2,}}[{{B}}]*$", ("--",), _I),
    *_MORE_ATTRIBUTIONS,
)

_EMBEDDED_RES = (*_ON_DATE_SOMEONE_WROTE_RES, *_ON_DATE_WROTE_SOMEONE_RES, *_SOMEONE_WROTE_ON_DATE_RES)
_EMBEDDED_MARKERS = (*_DATE_SOMEONE_MARKERS, *_OTHER_MARKERS)

# Header lines of a quoted message ("From: …", "Sent: …") in several languages.
_HEADERS_WITH_DATE = (
    "Sendt",
    "Sent",
    "Date",
    "Le",
    "Gesendet",
    "Enviada em",
    "Enviado",
    "Fecha",
    "Data",
    "Datum",
    "Skickat",
    "发送时间",
    "送信日時",
    "Отправлено",
    # more of Outlook's languages: fr, nl, it, pl, cs, fi, tr, ru, zh-TW, ko, ja, zh, vi, da
    "Envoyé",
    "Verzonden",
    "Inviato",
    "Wysłano",
    "Odesláno",
    "Lähetetty",
    "Gönderildi",
    "Tarih",
    "Дата",
    "寄件日期",
    "보낸 날짜",
    "日付",
    "日期",
    "Ngày",
    "Dato",
)
_HEADERS_WITH_TEXT = (
    "Fra",
    "Til",
    "Emne",
    "From",
    "To",
    "Cc",
    "Reply-To",
    "Subject",
    "De",
    "Expéditeur",
    "À",
    "Destinataire",
    "Répondre à",
    "Objet",
    "Von",
    "An",
    "Betreff",
    "Para",
    "Assunto",
    "Asunto",
    "Da",
    "Risposta",
    "A",
    "Oggetto",
    "Van",
    "Beantwoorden - Aan",
    "Aan",
    "Onderwerp",
    "Från",
    "Till",
    "Ämne",
    "发件人",
    "收件人",
    "主题",
    "差出人",
    "宛先",
    "件名",
    "От",
    "Кому",
    "Тема",
    # more of Outlook's languages: pl, cs, fi, tr, zh-TW, ko, vi, da/no/sv
    "Od",
    "Do",
    "Temat",
    "DW",
    "Komu",
    "Předmět",
    "Kopie",
    "Lähettäjä",
    "Vastaanottaja",
    "Aihe",
    "Kimden",
    "Kime",
    "Konu",
    "Bilgi",
    "寄件者",
    "收件者",
    "主旨",
    "副本",
    "抄送",
    "보낸 사람",
    "받는 사람",
    "제목",
    "참조",
    "Từ",
    "Đến",
    "Chủ đề",
    "Kopi",
    "Kopia",
)
_HEADER_RES = (
    _rx(rf"^[{{B}}*]*(?:{'|'.join(map(re.escape, _HEADERS_WITH_DATE))})[{{B}}*]*:.*[0-9]+"),
    _rx(rf"^[{{B}}*]*(?:{'|'.join(map(re.escape, _HEADERS_WITH_TEXT))})[{{B}}*]*:.*\w+", _I),
)


# A line holding none of the markers' first needles can only match the markers that have no needle.
_ANY_NEEDLE_RE = re.compile("|".join(re.escape(m.needles[0]) for m in _EMBEDDED_MARKERS if m.needles))
_MARKERS_WITHOUT_NEEDLES = tuple(m for m in _EMBEDDED_MARKERS if not m.needles)
# Lines up to this long are remembered: a forward's lines are classified twice (the forward check, then the reply
# split), and short lines (blank, "> ", signatures, quoted notifications) repeat from message to message.
_CACHED_LINE_LENGTH = 200


Find = Callable[[str], "re.Match[str] | None"]


def anchored_at_start(pattern: str) -> bool:
    """Whether every match of `pattern` begins where a line begins: it starts with "^" and has no "|" outside
    its groups (a character class or an escape may hold one). Errs towards False."""
    if not pattern.startswith("^"):
        return False
    depth, in_class, escaped = 0, False, False
    for index, char in enumerate(pattern):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            # "]" right after "[" or "[^" is a member, not the end of the class.
            in_class = char != "]" or pattern[index - 1] == "[" or pattern[index - 2 : index] == "[^"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return False
    return True


def _on_one_line(regex: re.Pattern[str]) -> Find:
    """`regex.search` for a string without a line break: a pattern anchored at the start of a line can only match
    at the string's start, which `match` tries alone; `search` would try every position of the line in vain."""
    return regex.match if anchored_at_start(regex.pattern) else regex.search


@dataclass(frozen=True, slots=True)
class _LineTests:
    empty: Find
    delimiter: Find
    reply_above: Find
    signatures: tuple[Find, ...]
    embedded: tuple[Find, ...]
    markers: tuple[tuple[_Marker, Find], ...]
    markers_without_needles: tuple[tuple[_Marker, Find], ...]
    headers: tuple[Find, ...]
    quote: Find

    @classmethod
    def made_with(cls, find: Callable[[re.Pattern[str]], Find]) -> _LineTests:
        return cls(
            empty=find(_EMPTY_RE), delimiter=find(_DELIMITER_RE), reply_above=find(_REPLY_ABOVE_RE),
            signatures=tuple(find(r) for r in _SIGNATURE_RES),
            embedded=tuple(_needing(_EMBEDDED_NEEDLES.get(r), find(r)) for r in _EMBEDDED_RES),
            markers=tuple((m, find(m.regex)) for m in _EMBEDDED_MARKERS),
            markers_without_needles=tuple((m, find(m.regex)) for m in _MARKERS_WITHOUT_NEEDLES),
            headers=tuple(find(r) for r in _HEADER_RES), quote=find(_QUOTE_RE),
        )


# Case-sensitive patterns that cannot match a line without this word.
_EMBEDDED_NEEDLES = dict(zip(_SOMEONE_WROTE_ON_DATE_RES, _SOMEONE_WROTE_ON_DATE_NEEDLES, strict=True))


def _needing(needle: str | None, find: Find) -> Find:
    if needle is None:
        return find
    return lambda line: find(line) if needle in line else None


_ANYWHERE = _LineTests.made_with(lambda regex: regex.search)
_ONE_LINE = _LineTests.made_with(_on_one_line)


def _is_signature(line: str, tests: _LineTests = _ANYWHERE) -> bool:
    stripped = _MARKDOWN_LINK_RE.sub(r"\1", line) if "](" in line else line
    return any(find(stripped) for find in tests.signatures)


def _is_embedded_marker(line: str, tests: _LineTests = _ANYWHERE) -> bool:
    lowered = line.lower()
    markers = tests.markers if _ANY_NEEDLE_RE.search(lowered) else tests.markers_without_needles
    return any(m.may_match(lowered) and find(line) for m, find in markers)


def classify_line(line: str) -> str:
    """One letter for what a line is: e, d, s, b (embedded-mail marker), h (header), q or t."""
    if len(line) <= _CACHED_LINE_LENGTH:
        return _classify_short_line(line)
    return _classify(line)


@functools.lru_cache(maxsize=4096)
def _classify_short_line(line: str) -> str:
    return _classify(line)


def _classify(line: str, tests: _LineTests | None = None) -> str:
    if tests is None:
        tests = _ANYWHERE if "\n" in line else _ONE_LINE
    if tests.empty(line):
        return EMPTY
    if tests.delimiter(line):
        return DELIMITER
    if len(line) <= _MAX_MARKER_LINE:
        if tests.reply_above(line):
            return DELIMITER
        if _is_signature(line, tests):
            return SIGNATURE
        if any(find(line) for find in tests.embedded) or _is_embedded_marker(line, tests):
            return EMBEDDED
        if any(find(line) for find in tests.headers):
            return EMAIL_HEADER
    if tests.quote(line):
        return QUOTE
    return TEXT


# --- text clean-up before classification ------------------------------------------------

_PGP_HEAD_RE = _rx(r"\A-----BEGIN PGP SIGNED MESSAGE-----\n(?:Hash: \w+)?\s+", _I)
_PGP_SIGNATURE_BEGIN_RE = re.compile(r"^-----BEGIN PGP SIGNATURE-----$", re.MULTILINE)
_PGP_SIGNATURE_END = "\n-----END PGP SIGNATURE-----"
_UNSUBSCRIBE_LINE_RE = _rx(r"Unsubscribe: .+@.", _I)
_UNSUBSCRIBE_LINK_LINE_RE = _rx(r".+http:.", _I)
_ALIAS_QUOTE_MARK_RE = _rx(r'>{5} "[^"\n]+" == ')
_ALIAS_QUOTE_END = " writes:"
_ENCLOSED_OPENER_RE = _rx(r">{4,}[{B}]*")
_ENCLOSED_CLOSER_RE = _rx(r"<{4,}[{B}]*")
_QUOTE_PREFIX_RE = _rx(r"^((?:[{B}]*[^\W\d_]*[>|])+)", re.MULTILINE)
_QUOTE_PREFIX_PART_RE = _rx(r"[^\W\d_]+>|\|")
_WRAP_RE = _rx(r"\n+\s*")
_CODE_FENCE_OPENER_RE = _rx(r"```\w*")
_CODE_FENCE_CLOSER = "```"
_CODE_BLOCK_TOKEN_RE = _rx("\ue000qaflow-code-block-[0-9]+\ue000")


def _unwrap_marker(match: re.Match[str]) -> str:
    found = match.group(0)
    return found if found.count("\n") > 4 else _WRAP_RE.sub(" ", found)


def _unwrap_line_pairs(text: str, marker: _Marker) -> str:
    """Join a "<date> <someone> wrote:" marker that was wrapped onto a second line.

    Only pairs of short lines holding the marker's needles are searched, which keeps these
    unanchored patterns away from long or numerous lines.
    """
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and len(line) + len(lines[i + 1]) <= _MAX_MARKER_LINE:
            pair = line + "\n" + lines[i + 1]
            if marker.may_match(pair.lower()):
                found = marker.regex.search(pair)
                if found and found.start() <= len(line) < found.end():
                    out.append(pair[: found.start()] + _WRAP_RE.sub(" ", found.group(0)) + pair[found.end() :])
                    i += 2
                    continue
        out.append(line)
        i += 1
    return "\n".join(out)


# Upstream's clean-up regexes (PGP signature, unsubscribe footer, alias-style and enclosed
# quotes, wrapped "wrote on" markers, code fences) backtrack over the rest of the text, or of
# a line, from every opener that has no closer: quadratic on a hostile body. The scans below
# find the same spans in linear time.


def _strip_pgp_signature(text: str) -> str:
    r"""Drop from the first "BEGIN PGP SIGNATURE" line through the last "END PGP SIGNATURE" after it.

    The span upstream's greedy `^-----BEGIN…-----$[\s\S]+^-----END…-----` removes.
    """
    begin = _PGP_SIGNATURE_BEGIN_RE.search(text)
    if begin is None:
        return text
    end = text.rfind(_PGP_SIGNATURE_END)
    if end < begin.end():
        return text
    return text[: begin.start()] + text[end + len(_PGP_SIGNATURE_END) :]


def _line_from(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def _strip_unsubscribe_footer(text: str) -> str:
    r"""Drop an "Unsubscribe: <address>" footer, and a link line under it, that ends the text.

    Upstream's `^Unsubscribe: .+@.+(?:\n.+http:.+)?\s*\Z`: only the last line that is not blank,
    or the one before it, can start that match.
    """
    last = text.rfind("\n", 0, len(text.rstrip())) + 1
    if last > 0 and _UNSUBSCRIBE_LINK_LINE_RE.match(_line_from(text, last)):
        before = text.rfind("\n", 0, last - 1) + 1
        if _UNSUBSCRIBE_LINE_RE.match(text[before : last - 1]):
            return text[:before]
    if _UNSUBSCRIBE_LINE_RE.match(_line_from(text, last)):
        return text[:last]
    return text


def _strip_alias_quote_markers(text: str) -> str:
    r"""Drop alias-style quote markers (upstream's `^.*>{5} "[^"\n]+" == .+ writes:`).

    That match runs from the line start through the last " writes:" that follows a mark.
    """
    lines = text.split("\n")
    for index, line in enumerate(lines):
        mark = _ALIAS_QUOTE_MARK_RE.search(line) if '" == ' in line else None
        if mark is not None:
            end = line.rfind(_ALIAS_QUOTE_END)
            if end > mark.end():
                lines[index] = line[end + len(_ALIAS_QUOTE_END) :]
    return "\n".join(lines)


def _unwrap_markers(text: str, regex: re.Pattern[str], needle: str) -> str:
    """`regex.sub(_unwrap_marker, text)` for a pattern whose first line holds `needle`.

    It is tried only where such a line starts and when that line is short enough to be a
    marker (longer lines never are, see classify_line): from the start of a long line
    holding many needles, a `^.+needle…` pattern backtracks quadratically.
    """
    out: list[str] = []
    copied = 0
    found = text.find(needle)
    while found >= 0:
        start = text.rfind("\n", 0, found) + 1
        end = text.find("\n", found)
        end = len(text) if end < 0 else end
        if start >= copied and end - start <= _MAX_MARKER_LINE:
            match = regex.match(text, start)
            if match:
                out += (text[copied:start], _unwrap_marker(match))
                copied = match.end()
        found = text.find(needle, max(end, copied))
    out.append(text[copied:])
    return "".join(out)


def _first_closer(closers: list[int], lines: list[str], opener: int) -> int | None:
    """The first closer line after `opener` that leaves a non-empty body between them (upstream's lazy body)."""
    earliest = opener + 2
    if earliest < len(lines) and lines[opener + 1] == "":
        earliest += 1  # one empty line is an empty body: the match needs the next closer
    index = bisect_left(closers, earliest)
    return closers[index] if index < len(closers) else None


def _replace_spans(
    lines: list[str], closer_for: Callable[[int], int | None], replace: Callable[[list[str]], list[str]]
) -> list[str]:
    """Each opener line through its closer line (both included) handed to `replace`, left to right."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        closer = closer_for(i)
        if closer is None:
            out.append(lines[i])
            i += 1
        else:
            out += replace(lines[i : closer + 1])
            i = closer + 1
    return out


def _quoted_body(span: list[str]) -> list[str]:
    return ["> " + line for line in span[1:-1]]


def _enclosure_name(line: str, mark: str) -> str | None:
    """What sits between `mark` at the start of a line and the same mark at its end."""
    if len(line) > 2 * len(mark) and line.startswith(mark) and line.endswith(mark):
        return line[len(mark) : -len(mark)]
    return None


def _name_choices(inner: str) -> list[str]:
    """The names `>>> ?(.+) ?>>>` can capture from what sits between the marks, in regex order."""
    choices: list[str] = []
    for start in (1, 0) if inner.startswith(" ") else (0,):
        name = inner[start:]
        choices += [name, name[:-1]] if name.endswith(" ") else [name]
    return [name for name in choices if name]


def _quote_named_enclosures(lines: list[str]) -> list[str]:
    """Lines ">>> name >>>" … "<<< name <<<" become the lines in between, quoted (first matching closer)."""
    closers: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        inner = _enclosure_name(line, "<<<")
        if inner is not None:
            closers.setdefault(inner, []).append(index)

    def closer_for(opener: int) -> int | None:
        inner = _enclosure_name(lines[opener], ">>>")
        if inner is None:
            return None
        for name in _name_choices(inner):
            found = [
                closer
                for spaced in {name, " " + name, name + " ", " " + name + " "}
                if (closer := _first_closer(closers.get(spaced, []), lines, opener)) is not None
            ]
            if found:
                return min(found)
        return None

    return _replace_spans(lines, closer_for, _quoted_body)


def _quote_enclosures(lines: list[str]) -> list[str]:
    """Lines ">>>>" … "<<<<" become the lines in between, quoted (first closer after each opener)."""
    closers = [index for index, line in enumerate(lines) if _ENCLOSED_CLOSER_RE.fullmatch(line)]

    def closer_for(opener: int) -> int | None:
        if not _ENCLOSED_OPENER_RE.fullmatch(lines[opener]):
            return None
        return _first_closer(closers, lines, opener)

    return _replace_spans(lines, closer_for, _quoted_body)


# "reply On Wed, Apr 4, 2012 at 3:59 PM, bob@example.com wrote:": a client that put the attribution on the
# last line of the reply. Where such a marker starts inside a line, the line is split in two.
_SHARED_LINE_START_RE = _rx(r"(?:-{2,}[{B}]*|[{B}]+)(?=(?:On|Am|Le|El|Em|Il|Op|Den|W dniu|Dne) )")
_SHARED_LINE_NEEDLES = ("wrote", "schrieb", "écrit", "escribió", "escreveu", "scritto", "schreef", "skrev",
                        "napisał", "napsal", "geschreven")
_DIGIT_RE = re.compile(r"[0-9]")


def _split_shared_marker_line(line: str) -> list[str]:
    """[line], or [the reply's end, the marker] when an "On … wrote:" marker starts inside the line."""
    if len(line) > _MAX_MARKER_LINE or line.lstrip().startswith(">") or not line.rstrip().endswith((":", "-")):
        return [line]
    lowered = line.lower()
    if not any(n in lowered for n in _SHARED_LINE_NEEDLES):
        return [line]
    for tried, start in enumerate(_SHARED_LINE_START_RE.finditer(line)):
        if tried == 3:
            break
        head, marker = line[: start.start()], line[start.start() :].strip()
        if not head.strip(" \t\u00a0>-") or not _DIGIT_RE.search(marker):
            continue
        if any(r.match(marker) for r in _ON_DATE_SOMEONE_WROTE_RES):
            return [head.rstrip(), marker]
    return [line]


def _split_shared_marker_lines(text: str) -> str:
    return "\n".join(part for line in text.split("\n") for part in _split_shared_marker_line(line))


def _preprocess(text: str) -> str:
    text = text.replace("\r\n", "\n")
    if "-----BEGIN PGP" in text:
        text = _strip_pgp_signature(_PGP_HEAD_RE.sub("", text))
    if "Unsubscribe: " in text or "unsubscribe: " in text.lower():
        text = _strip_unsubscribe_footer(text)
    if '" == ' in text:
        text = _strip_alias_quote_markers(text)
    if "<<<" in text:
        text = "\n".join(_quote_named_enclosures(text.split("\n")))
    if "<<<<" in text:
        text = "\n".join(_quote_enclosures(text.split("\n")))
    if ">" in text or "|" in text:
        text = _QUOTE_PREFIX_RE.sub(lambda m: _QUOTE_PREFIX_PART_RE.sub(">", m.group(1)), text)
    for regex in _ON_DATE_SOMEONE_WROTE_RES:
        text = regex.sub(_unwrap_marker, text)
    for regex, needle in zip(_SOMEONE_WROTE_ON_DATE_RES, _SOMEONE_WROTE_ON_DATE_NEEDLES, strict=True):
        text = _unwrap_markers(text, regex, needle)
    lowered = text.lower()
    for marker in _DATE_SOMEONE_MARKERS:
        if marker.may_match(lowered):
            text = _unwrap_line_pairs(text, marker)
            lowered = text.lower()
    return _split_shared_marker_lines(text).strip()


def _hoist_code_blocks(text: str) -> tuple[str, dict[str, str]]:
    """Replace fenced code blocks ("```lang" to the next "```" line) by placeholder lines, so they are never trimmed."""
    blocks: dict[str, str] = {}
    if "```" not in text:
        return text, blocks
    lines = text.split("\n")
    closers = [index for index, line in enumerate(lines) if line == _CODE_FENCE_CLOSER]

    def closer_for(opener: int) -> int | None:
        if opener + 1 == len(lines) or not _CODE_FENCE_OPENER_RE.fullmatch(lines[opener]):
            return None
        index = bisect_right(closers, opener)
        return closers[index] if index < len(closers) else None

    def stash(span: list[str]) -> list[str]:
        token = f"\ue000qaflow-code-block-{len(blocks)}\ue000"
        blocks[token] = "\n".join(span)
        return [token]

    return "\n".join(_replace_spans(lines, closer_for, stash)), blocks


def _restore_code_blocks(text: str, blocks: dict[str, str]) -> str:
    if not blocks:
        return text
    return _CODE_BLOCK_TOKEN_RE.sub(lambda m: blocks.get(m.group(0), m.group(0)), text)


# --- rules over the pattern string --------------------------------------------------------


class _Lines:
    """The lines still in play, with their one-letter kinds."""

    __slots__ = ("lines", "pattern")

    def __init__(self, lines: list[str], pattern: str) -> None:
        self.lines = lines
        self.pattern = pattern

    def keep_through(self, index: int) -> None:
        self.lines = self.lines[: index + 1]
        self.pattern = self.pattern[: index + 1]

    def keep_before(self, index: int) -> None:
        self.lines = self.lines[:index]
        self.pattern = self.pattern[:index]

    def drop_kind(self, kind: str) -> None:
        if kind in self.pattern:
            kept = [i for i, k in enumerate(self.pattern) if k != kind]
            self.lines = [self.lines[i] for i in kept]
            self.pattern = "".join(self.pattern[i] for i in kept)


def _last_run_start(pattern: str, allowed: str) -> int:
    """Start of the longest suffix made only of `allowed` kinds (len(pattern) when none)."""
    i = len(pattern)
    while i > 0 and pattern[i - 1] in allowed:
        i -= 1
    return i


def _reply_at_end_start(pattern: str) -> int | None:
    """Bottom-posting: the pattern is b, then no text, then text to the end (b[^t]+t[et]*)."""
    if not pattern.startswith(EMBEDDED):
        return None
    start = _last_run_start(pattern, "et")
    first_text = pattern.find(TEXT, start)
    if first_text < 2 or TEXT in pattern[1:first_text]:
        return None
    return first_text


def _text_before_marker(pattern: str, marker: int) -> int | None:
    """Index of the text line before `marker` with only empty lines between (t e* b)."""
    i = marker - 1
    while i >= 0 and pattern[i] == EMPTY:
        i -= 1
    return i if i >= 0 and pattern[i] == TEXT else None


def _marker_not_followed_by_quote(pattern: str) -> int | None:
    """Leftmost text line of `t e* b [^q]*$`: a marker with no quote after it."""
    last_quote = pattern.rfind(QUOTE)
    best: int | None = None
    for marker in range(last_quote + 1, len(pattern)):
        if pattern[marker] == EMBEDDED:
            found = _text_before_marker(pattern, marker)
            if found is not None and (best is None or found < best):
                best = found
    return best


def _marker_followed_by_quote(pattern: str) -> int | None:
    """Leftmost text line of `t e* b [eqbh]* ([te]*)$` when that tail holds fewer than 7 text lines."""
    tail_start = _last_run_start(pattern, "te")
    quote_start = _last_run_start(pattern[:tail_start], "eqbh")
    for marker in range(len(pattern)):
        if pattern[marker] != EMBEDDED:
            continue
        found = _text_before_marker(pattern, marker)
        if found is None:
            continue
        # The regex engine takes the leftmost `t e* b` whose remainder is [eqbh]*[te]*.
        if marker + 1 >= quote_start:
            tail = pattern[max(marker + 1, _greedy_eqbh_end(pattern, marker + 1)) :]
            return found if tail.count(TEXT) < 7 else -1
    return None


def _greedy_eqbh_end(pattern: str, start: int) -> int:
    i = start
    while i < len(pattern) and pattern[i] in "eqbh":
        i += 1
    return i


def _trailing_quote_start(pattern: str) -> int | None:
    """Start of `t? e* [qbe]+$`: a quote (and its marker) ending the mail."""
    start = _last_run_start(pattern, "qbe")
    if start == len(pattern):
        return None
    if start > 0 and pattern[start - 1] == TEXT:
        return start - 1
    return start


def _spread_multiline_headers(pattern: str) -> str:
    """Headers wrapped over several lines (h+[hte]+h+e) become one header block."""
    runs = re.finditer(r"[hte]+", pattern)
    for run in runs:
        first_h = pattern.find(EMAIL_HEADER, run.start(), run.end())
        if first_h < 0:
            continue
        for end in range(run.end() - 1, first_h + 2, -1):
            if pattern[end] == EMPTY and pattern[end - 1] == EMAIL_HEADER:
                return pattern[:first_h] + EMAIL_HEADER * (end - first_h + 1) + pattern[end + 1 :]
    return pattern


def _header_runs(pattern: str) -> list[int]:
    """For each header line, how many header lines its block holds from there on.

    One text line between two headers is a wrapped header value ("From: x [mailto:" / "x]") and
    continues the block. Computed right to left, so the whole pattern is read once.
    """
    runs = [0] * (len(pattern) + 2)
    for k in range(len(pattern) - 1, -1, -1):
        if pattern[k] != EMAIL_HEADER:
            continue
        if pattern[k + 1 : k + 2] == EMAIL_HEADER:
            runs[k] = 1 + runs[k + 1]
        elif pattern[k + 1 : k + 3] == TEXT + EMAIL_HEADER:
            runs[k] = 1 + runs[k + 2]
        else:
            runs[k] = 1
    return runs


def _text_before_header_block(pattern: str) -> int | None:
    """Leftmost text line of `t [eq]* h{3,}`: a quoted message's header block after the reply."""
    runs = _header_runs(pattern) if EMAIL_HEADER in pattern else []
    for i, kind in enumerate(pattern):
        if kind != TEXT:
            continue
        j = i + 1
        while j < len(pattern) and pattern[j] in "eq":
            j += 1
        if runs and j < len(pattern) and runs[j] >= 3:
            return i
    return None


def _closing_words(state: _Lines, kept_through: int) -> list[str]:
    """A short sign-off the writer put under the quote ("Regards, Roman"): one or two short text lines ending
    the mail after a quote, with nothing but the quote between them and the reply."""
    pattern = state.pattern
    start = _last_run_start(pattern, "te")
    before = pattern[kept_through + 1 : start]
    closing = [line for line in state.lines[start:] if line.strip()]
    if not before or QUOTE not in before or not before.rstrip(EMPTY).endswith(QUOTE):
        return []
    if not 0 < len(closing) <= 2 or any(len(line) > 40 for line in closing):
        return []
    return ["", *closing]


def _select_reply(state: _Lines) -> None:
    first_delimiter = state.pattern.find(DELIMITER)
    if first_delimiter >= 0:
        state.keep_before(first_delimiter)
    state.drop_kind(SIGNATURE)

    at_end = _reply_at_end_start(state.pattern)
    if at_end is not None:
        state.lines = state.lines[at_end:]
        state.pattern = ""

    index = _marker_not_followed_by_quote(state.pattern)
    if index is not None:
        state.keep_through(index)

    index = _marker_followed_by_quote(state.pattern)
    if index is not None and index >= 0:
        closing = _closing_words(state, index)
        state.keep_through(index)
        state.lines += closing

    index = _trailing_quote_start(state.pattern)
    if index is not None:
        state.keep_through(index)

    state.drop_kind(EMBEDDED)
    state.pattern = _spread_multiline_headers(state.pattern)

    index = _text_before_header_block(state.pattern)
    if index is not None:
        state.keep_through(index)
    state.drop_kind(EMAIL_HEADER)

    if TEXT in state.pattern:
        start = _last_run_start(state.pattern, "eq")
        if start < len(state.pattern):
            state.keep_before(start)


def _elided_lines(original: list[str], kept: list[str]) -> list[str]:
    """The original lines that did not make it into `kept` (an in-order walk, like upstream)."""
    elided: list[str] = []
    o = k = 0
    while o < len(original):
        while k < len(kept) and o < len(original) and original[o] == kept[k]:
            o += 1
            k += 1
        if o < len(original):
            elided.append(original[o])
        o += 1
    return elided


def _classified(text: str) -> tuple[list[str], str, dict[str, str]]:
    text, blocks = _hoist_code_blocks(_preprocess(text))
    lines = text.split("\n")
    kinds: dict[str, str] = {}  # a line repeated (blank, "> ", or a hostile body's one line) is classified once
    for line in lines:
        if line not in kinds:
            kinds[line] = classify_line(line)
    return lines, "".join(kinds[line] for line in lines), blocks


def is_signature_only(text: str) -> bool:
    """True when the writer's own (unquoted) lines are nothing but a signature.

    That is: a "Sent from my phone" line, or lines after a "-- " style delimiter, with no
    text line before them, ahead of any quote, quoted-mail marker or header block.
    """
    if not text or not text.strip():
        return False
    _lines, pattern, _blocks = _classified(text)
    own_end = min((i for i in (pattern.find(k) for k in "qbh") if i >= 0), default=len(pattern))
    own = pattern[:own_end]
    delimiter = own.find(DELIMITER)
    before_delimiter = own if delimiter < 0 else own[:delimiter]
    if TEXT in before_delimiter:
        return False
    return SIGNATURE in own or (delimiter >= 0 and TEXT in own[delimiter:])


def split_reply(text: str) -> tuple[str, str]:
    """(visible reply, elided part): quoted history, markers, headers and signatures go to the second."""
    if not text or not text.strip():
        return "", ""
    lines, pattern, blocks = _classified(text)
    state = _Lines(list(lines), pattern)
    _select_reply(state)
    visible = _restore_code_blocks("\n".join(state.lines).strip(), blocks)
    elided = _restore_code_blocks("\n".join(_elided_lines(lines, state.lines)).strip(), blocks)
    return visible, elided


def trim_reply(text: str) -> str:
    """The visible reply only: what a forum post made from this mail body should show."""
    return split_reply(text)[0]
