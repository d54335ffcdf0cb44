"""Settings: frozen dataclasses loaded from TOML, then overridden by QAFLOW_<SECTION>__<KEY> variables."""

from __future__ import annotations

import dataclasses
import os
import secrets
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("config/qaflow.toml")
ENV_PREFIX = "QAFLOW_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class SiteSettings:
    name: str = "QAFlow"
    domain: str = "qaflow.localhost"
    base_url: str = "http://127.0.0.1:8080"
    data_dir: str = "var"


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = "sqlite+aiosqlite:///var/qaflow.db"
    echo: bool = False


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 8025
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 50
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class LmtpSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8024


@dataclass(frozen=True, slots=True)
class HttpSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class ImapSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 993
    ssl: bool = True
    ca_file: str = ""
    username: str = ""
    password: str = ""
    mailbox: str = "INBOX"
    poll_interval: float = 60.0
    use_idle: bool = True
    processed_mailbox: str = ""
    failed_mailbox: str = ""


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    transport: str = "outbox"
    outbox_dir: str = "var/outbox"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_ca_file: str = ""
    concurrency: int = 4
    batch_size: int = 100
    poll_interval: float = 1.0
    max_attempts: int = 8
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class DigestSettings:
    enabled: bool = True
    daily_at: str = "07:00"
    weekly_day: str = "mon"
    timezone: str = "UTC"
    max_topics: int = 50


@dataclass(frozen=True, slots=True)
class AnnounceSettings:
    address: str = "announce"
    require: str = "dkim_or_confirm"
    trusted_authserv_id: str = ""
    confirm_ttl_hours: int = 48
    confirm_rate_per_hour: int = 3
    batch_size: int = 500


@dataclass(frozen=True, slots=True)
class TokensSettings:
    secret: str = ""
    previous_secret: str = ""
    reply_ttl_days: int = 180

    @property
    def secrets(self) -> list[str]:
        """The keys a token may be signed with: the current one first, then the one it replaced."""
        return [s for s in (self.secret, self.previous_secret) if s]


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_attachments: int = 10
    max_attachment_size: int = 10 * 1024 * 1024
    max_received_headers: int = 30
    sender_rate_per_hour: int = 60
    notice_rate_per_hour: int = 5
    bounce_score_threshold: float = 5.0
    hard_bounce_score: float = 1.0
    soft_bounce_score: float = 0.0
    shunt_after_failures: int = 3


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class Settings:
    site: SiteSettings = field(default_factory=SiteSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    lmtp: LmtpSettings = field(default_factory=LmtpSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    digest: DigestSettings = field(default_factory=DigestSettings)
    announce: AnnounceSettings = field(default_factory=AnnounceSettings)
    tokens: TokensSettings = field(default_factory=TokensSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


SECRET_KEYS = frozenset({("tokens", "secret"), ("tokens", "previous_secret"), ("imap", "password"),
                         ("outbound", "smtp_password")})


def _coerce(value: Any, target: type, where: str) -> Any:
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if target is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if target is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if target is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {name: hints[name] for name in (f.name for f in dataclasses.fields(Settings))}


def _build(raw: Mapping[str, Mapping[str, Any]]) -> Settings:
    sections: dict[str, Any] = {}
    for section_name, section_type in _section_types().items():
        values = dict(raw.get(section_name, {}))
        hints = typing.get_type_hints(section_type)
        known = {f.name for f in dataclasses.fields(section_type)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"[{section_name}]: unknown key(s) {', '.join(sorted(unknown))}")
        kwargs = {}
        for key, value in values.items():
            target = hints[key]
            if isinstance(target, types.UnionType):
                target = next(t for t in typing.get_args(target) if t is not type(None))
            kwargs[key] = _coerce(value, target, f"[{section_name}] {key}")
        sections[section_name] = section_type(**kwargs)
    unknown_sections = set(raw) - set(sections)
    if unknown_sections:
        raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown_sections))}")
    return Settings(**sections)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].partition("__")
        overrides.setdefault(section.lower(), {})[key.lower()] = value
    return overrides


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if environ.get("QAFLOW_CONFIG"):
        return Path(environ["QAFLOW_CONFIG"])
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return None


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read TOML at `path` (if any), apply environment overrides, validate."""
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                raw = {k: dict(v) for k, v in tomllib.load(fh).items()}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    for section, values in _env_overrides(env).items():
        raw.setdefault(section, {}).update(values)
    settings = _build(raw)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    if settings.outbound.transport not in {"outbox", "smtp"}:
        raise ConfigError('[outbound] transport must be "outbox" or "smtp"')
    if not settings.site.domain or "@" in settings.site.domain:
        raise ConfigError("[site] domain must be a bare domain name")
    if settings.smtp.max_message_size <= 0:
        raise ConfigError("[smtp] max_message_size must be positive")
    if settings.announce.require not in {"dkim_or_confirm", "dkim", "confirm"}:
        raise ConfigError('[announce] require must be "dkim_or_confirm", "dkim" or "confirm"')


def ensure_token_secret(settings: Settings) -> Settings:
    """Return settings with a token secret: the configured one, or one generated once and kept in data_dir."""
    if settings.tokens.secret:
        return settings
    if not settings.database.url.startswith("sqlite"):
        # A shared database means several nodes may sign and verify each other's tokens: one key for all of them.
        raise ConfigError(
            "[tokens] secret must be set when the database is shared (not SQLite): every gateway node signs and "
            "verifies reply and unsubscribe addresses with it; set QAFLOW_TOKENS__SECRET"
        )
    secret_file = Path(settings.site.data_dir) / "token-secret"
    if secret_file.exists():
        secret = secret_file.read_text().strip()
    else:
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
    return dataclasses.replace(settings, tokens=dataclasses.replace(settings.tokens, secret=secret))


def redacted(settings: Settings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(settings):
        values = dataclasses.asdict(getattr(settings, section.name))
        for key in values:
            if (section.name, key) in SECRET_KEYS and values[key]:
                values[key] = "***"
        out[section.name] = values
    return out
