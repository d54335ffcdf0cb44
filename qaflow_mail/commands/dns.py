"""`dns [--check] [--json]`: the DNS records the mail domain needs, and what a resolver answers for them;
`dkim keygen`: a new DKIM key for the gateway to sign with."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from qaflow_mail.commands.common import CommandError, Subparsers, print_json
from qaflow_mail.config import Settings
from qaflow_mail.outbound.dkim_sign import DkimKeyError, generate_key, public_key_record, record_name
from qaflow_mail.outbound.dns_records import (
    Record,
    Status,
    check_records,
    https_problem,
    required_records,
)

DEFAULT_SELECTOR = "qaflow"
DNS_TIMEOUT_SECONDS = 5.0


def records_for(settings: Settings) -> list[Record]:
    dkim_txt = ""
    if settings.dkim.enabled:
        try:
            dkim_txt = public_key_record(Path(settings.dkim.private_key_file))
        except DkimKeyError as exc:
            raise CommandError(str(exc)) from None
    return required_records(domain=settings.site.domain, mx_host=settings.smtp.hostname or settings.site.domain,
                            dkim_selector=settings.dkim.selector, dkim_txt=dkim_txt)


def resolve(name: str, rdtype: str) -> Sequence[str]:
    """What the system's resolver answers (dnspython); [] when the name or the record does not exist."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, rdtype, lifetime=DNS_TIMEOUT_SECONDS)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
        return []
    except dns.exception.Timeout:
        raise CommandError(f"no answer from the resolver for {name} {rdtype} within {DNS_TIMEOUT_SECONDS:g}s") \
            from None
    if rdtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    return [r.to_text() for r in answer]


def cmd_dns(settings: Settings, args: argparse.Namespace) -> int:
    records = records_for(settings)
    https = https_problem(settings.site.base_url)
    if not settings.dkim.enabled:
        note = ("DKIM: the gateway does not sign ([dkim] selector/private_key_file unset): the MTA must sign for "
                f"d={settings.site.domain}, and its key's record is published as the MTA's documentation says")
    else:
        note = ""
    if not args.check:
        if args.json:
            print_json({"records": [{"name": r.name, "type": r.type, "value": r.value, "why": r.why}
                                    for r in records],
                        "https": https, "note": note})
            return 0
        for record in records:
            print(f"; {record.why}")
            print(record.zone_line())
        print("; PTR: the sending IP's reverse name must resolve back to it (forward-confirmed reverse DNS)")
        if note:
            print(f"; {note}")
        if https:
            print(f"; PROBLEM: {https}")
        return 0
    findings = check_records(records, resolve)
    if args.json:
        print_json({"findings": [f.as_dict() for f in findings], "https": https, "note": note})
    else:
        for finding in findings:
            seen = "; ".join(finding.found) or "nothing"
            print(f"{finding.status.value:<8} {finding.record.name} {finding.record.type}: want "
                  f"{finding.record.value!r}, found {seen}")
        if https:
            print(f"problem  {https}")
    failed = https is not None or any(f.status in {Status.MISSING, Status.WRONG} for f in findings)
    return 1 if failed else 0


def cmd_dkim_keygen(settings: Settings, args: argparse.Namespace) -> int:
    selector = args.selector or settings.dkim.selector or DEFAULT_SELECTOR
    out = Path(args.out) if args.out else Path(settings.site.data_dir) / "dkim" / f"{selector}.key"
    try:
        generate_key(out, bits=args.bits)
        txt = public_key_record(out)
    except DkimKeyError as exc:
        raise CommandError(str(exc)) from None
    print(f"private key written to {out.resolve()} (mode 0600)")
    print(f"publish: {record_name(selector, settings.site.domain)}. 3600 IN TXT \"{txt}\"")
    print("then set, in the config file or the environment:")
    print(f'  [dkim]\n  selector = "{selector}"\n  private_key_file = "{out.resolve()}"')
    sys.stdout.flush()
    return 0


def register(subparsers: Subparsers) -> None:
    dns_parser = subparsers.add_parser("dns", help="the DNS records the mail domain needs (MX, SPF, DKIM, DMARC)")
    dns_parser.add_argument("--check", action="store_true", help="compare with what the resolver answers")
    dns_parser.add_argument("--json", action="store_true")
    dns_parser.set_defaults(func=cmd_dns)
    dkim = subparsers.add_parser("dkim", help="DKIM signing keys").add_subparsers(dest="dkim_command", required=True)
    keygen = dkim.add_parser("keygen", help="make a new RSA key for [dkim] private_key_file")
    keygen.add_argument("--selector", help=f"selector name (else [dkim] selector, else {DEFAULT_SELECTOR})")
    keygen.add_argument("--out", help="key file to write (else <data_dir>/dkim/<selector>.key); never replaced")
    keygen.add_argument("--bits", type=int, default=2048, choices=[1024, 2048, 3072, 4096])
    keygen.set_defaults(func=cmd_dkim_keygen)
