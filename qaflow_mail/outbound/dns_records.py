"""The DNS records the mail domain needs for mail to be delivered (Gmail's and Yahoo's 2024 sender rules),
and how what a resolver answers compares with them. Pure: the caller does the lookups."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

# (name, record type) -> the answers, as text (TXT strings joined); [] for no such record.
Resolve = Callable[[str, str], Sequence[str]]


class Status(StrEnum):
    OK = "ok"
    MISSING = "missing"
    DIFFERS = "differs"  # present, not what we print: fine when deliberate (more senders in SPF, p=reject)
    WRONG = "wrong"  # present and unusable (a DKIM key that is not ours)


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    type: str
    value: str
    why: str

    def zone_line(self) -> str:
        value = f'"{self.value}"' if self.type == "TXT" else self.value
        return f"{self.name}. 3600 IN {self.type} {value}"


@dataclass(frozen=True, slots=True)
class Finding:
    record: Record
    status: Status
    found: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.record), "status": self.status.value, "found": list(self.found)}


def required_records(*, domain: str, mx_host: str, dkim_selector: str = "", dkim_txt: str = "",
                     postmaster: str = "postmaster") -> list[Record]:
    """Every record to publish for `domain`. Without a DKIM key of ours, the MTA's own DKIM record is the
    operator's to publish (and is not listed)."""
    domain = domain.lower().rstrip(".")
    records = [
        Record(domain, "MX", f"10 {mx_host.lower().rstrip('.')}.",
               "mail to the forum's addresses reaches the gateway's MTA"),
        Record(domain, "TXT", "v=spf1 mx ~all",
               "SPF: the MX host may send for the domain (Gmail/Yahoo: SPF or DKIM for all; both for bulk)"),
        Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=none; rua=mailto:{postmaster}@{domain}",
               "DMARC policy, at least p=none (Gmail/Yahoo bulk senders), aligned with From's domain"),
    ]
    if dkim_selector and dkim_txt:
        records.insert(2, Record(f"{dkim_selector}._domainkey.{domain}", "TXT", dkim_txt,
                                 "DKIM key for d=" + domain + " (Gmail/Yahoo bulk senders: DKIM aligned with From)"))
    return records


def https_problem(base_url: str) -> str | None:
    """Why one-click unsubscribe (RFC 8058, required by Gmail/Yahoo for bulk mail) cannot work, or None."""
    scheme = urlsplit(base_url).scheme.lower()
    if scheme != "https":
        return (f"[site] base_url is {base_url!r}: the one-click unsubscribe link (List-Unsubscribe-Post) "
                "must be an https URL; put TLS in front of the HTTP listener and set base_url to https://…")
    return None


def _normal(value: str) -> str:
    return " ".join(value.replace('"', "").split()).lower().rstrip(".")


def _compare(record: Record, found: Sequence[str]) -> Status:
    if record.type == "MX":
        wanted_host = record.value.split()[-1]
        return Status.OK if any(_normal(v).split()[-1:] == [_normal(wanted_host)] for v in found) else (
            Status.DIFFERS if found else Status.MISSING)
    prefix = _normal(record.value).split(";")[0].split()[0]  # v=spf1, v=dkim1, v=dmarc1
    relevant = [v for v in found if _normal(v).startswith(prefix)]
    if not relevant:
        return Status.MISSING
    if any(_normal(v) == _normal(record.value) for v in relevant):
        return Status.OK
    if prefix == "v=dkim1":
        wanted_key = _dkim_key(record.value)
        return Status.OK if any(_dkim_key(v) == wanted_key for v in relevant) else Status.WRONG
    return Status.DIFFERS


def _dkim_key(value: str) -> str:
    for part in value.replace('"', "").split(";"):
        name, _, data = part.strip().partition("=")
        if name.strip() == "p":
            return "".join(data.split())
    return ""


def check_records(records: Sequence[Record], resolve: Resolve) -> list[Finding]:
    findings = []
    for record in records:
        found = tuple(resolve(record.name, record.type))
        findings.append(Finding(record, _compare(record, found), found))
    return findings
