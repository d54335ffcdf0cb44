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
    base_url: str = ""  # empty: the HTTP listener's own address (Settings.__post_init__)
    data_dir: str = "var"
    tagline: str = "Ask questions and get answers from our community."  # the web pages' welcome line
    node_name: str = ""  # this process's label in /metrics' in-process figures; empty: the host name
    # Not a config key: the installation salt of minted Message-IDs, read from the database at start-up
    # (db/installation.py), so a recreated database never mints an id an earlier one did.
    message_id_salt: str = ""


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = ""  # empty: SQLite at <data_dir>/qaflow.db (Settings.__post_init__)
    echo: bool = False
    statement_timeout: float = 30.0  # seconds a statement (or a wait for a lock or a connection) may take
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.url:
            object.__setattr__(self, "url", async_database_url(self.url))


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 8025
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 50
    hostname: str = ""
    idle_timeout: float = 300.0  # seconds without a command or DATA bytes before the connection is closed
    max_connections: int = 400
    max_connections_per_client: int = 20
    junk_command_limit: int = 50  # NOOP, RSET, VRFY, HELP and unknown commands per connection
    max_bytes_in_flight: int = 64 * 1024 * 1024  # bytes of received mail processed at once, all connections
    in_flight_wait: float = 20.0  # seconds a message waits for room within max_bytes_in_flight; then 452 4.3.1
    spool_threshold: int = 1024 * 1024  # DATA beyond this many bytes is spooled to a temporary file
    spool_dir: str = ""  # where spooled DATA goes; empty: the system's temporary directory
    # "inline": the pipeline runs before the reply (refusals are SMTP replies); "queue": the message is written to
    # queue_dir and fsynced, answered 250, and taken by the queue workers (refusals are told by mail); "auto":
    # inline while the pipeline is free, queued while another message waits for it (server.accept_policy).
    accept: str = "auto"
    queue_dir: str = ""  # empty: <data_dir>/queue (Settings.__post_init__)
    queue_workers: int = 1  # processes that take queued mail while any waits; 0: a task of the serve process
    queue_concurrency: int = 4  # messages one queue worker takes at once
    queue_min_free: int = 256 * 1024 * 1024  # bytes the queue's file system keeps free; a message that would
    # leave less gets "452 4.3.1" (Postfix's queue_minfree)


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
    views_flush_seconds: float = 30.0  # topic page views are added to the database in batches this often
    follow_per_client_per_hour: int = 10  # "Follow by email" form posts per client IP (IPv6: per /64)


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
    outbox_dir: str = ""  # empty: <data_dir>/outbox (Settings.__post_init__)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_ca_file: str = ""
    concurrency: int = 8  # connections to the relay, each with one message at a time
    batch_size: int = 500  # outbox rows claimed per round: each round ends waiting for its slowest message
    poll_interval: float = 1.0
    max_attempts: int = 8
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 6 * 3600.0
    lease_seconds: float = 300.0  # a claimed outbox batch; after a crash its unsent rows go out again after this
    fanout_lease_seconds: float = 120.0  # a claimed fan-out job; after a crash another worker resumes it after this


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
    cpu_workers: int = 2  # processes that parse and extract untrusted mail, off the event loop
    cpu_deadline: float = 10.0  # seconds of work one message may cost; beyond: refused as too complex
    cpu_inline_size: int = 32 * 1024  # smaller messages are read on the loop: cheaper than a worker's round trip
    max_mime_depth: int = 20
    max_mime_parts: int = 500
    max_header_size: int = 256 * 1024
    max_html_size: int = 2 * 1024 * 1024
    # Storm guard: replies beyond this from one sender in one topic within 10 minutes are held for moderation.
    topic_replies_per_10min: int = 10
    # ... and so is a reply that makes this many replies in a row alternating between two senders (each answering
    # the other) within ping_pong_seconds: faster than people write.
    ping_pong_replies: int = 4
    ping_pong_seconds: int = 120


@dataclass(frozen=True, slots=True)
class SubscriptionsSettings:
    default_mode: str = "each"  # what <slug>-join@ gives when the mail names no mode
    confirm_ttl_days: int = 7  # how long a join or leave confirmation can be used


@dataclass(frozen=True, slots=True)
class ModerationSettings:
    first_posts: int = 1  # a staged user's first N posts wait for a moderator
    max_links: int = 5  # more links than this from a user with few posts wait for a moderator
    links_trusted_after_posts: int = 3  # "few posts": fewer published posts than this
    spam_headers: bool = True  # honour our own MTA's X-Spam-Flag / X-Spam-Status / X-Spam verdict


@dataclass(frozen=True, slots=True)
class DkimSettings:
    selector: str = ""
    private_key_file: str = ""

    @property
    def enabled(self) -> bool:
        """The gateway signs its own mail only when both are set; otherwise signing is left to the MTA."""
        return bool(self.selector and self.private_key_file)


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    sent_outbox_days: int = 30
    accepted_inbound_days: int = 90
    refused_inbound_days: int = 30
    pending_reference_days: int = 30
    interval_minutes: int = 60


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
    subscriptions: SubscriptionsSettings = field(default_factory=SubscriptionsSettings)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)

    def __post_init__(self) -> None:
        # Defaults that follow other settings: the database and outbox live in data_dir, links go to the listener.
        data_dir = Path(self.site.data_dir)
        if not self.database.url:
            object.__setattr__(self, "database", dataclasses.replace(
                self.database, url=f"sqlite+aiosqlite:///{data_dir / 'qaflow.db'}"))
        if not self.outbound.outbox_dir:
            object.__setattr__(self, "outbound", dataclasses.replace(
                self.outbound, outbox_dir=str(data_dir / "outbox")))
        if not self.smtp.queue_dir:
            object.__setattr__(self, "smtp", dataclasses.replace(self.smtp, queue_dir=str(data_dir / "queue")))
        if not self.site.base_url:
            object.__setattr__(self, "site", dataclasses.replace(self.site, base_url=listener_url(self.http)))


# What people write → the async driver this program needs (the URL every other tool takes works here too).
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+pg8000": "postgresql+asyncpg",
}
_SUPPORTED_DRIVERS = frozenset({"sqlite+aiosqlite", "postgresql+asyncpg"})


def async_database_url(url: str) -> str:
    """`url` with the async driver for its database: sqlite:/// → sqlite+aiosqlite:///, postgresql:// → asyncpg."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"[database] url: not a database URL: {url.split('@')[-1]!r} "
                          "(expected sqlite:///path or postgresql://user@host/dbname)")
    driver = _ASYNC_DRIVERS.get(scheme.lower(), scheme.lower())
    if driver not in _SUPPORTED_DRIVERS:
        raise ConfigError(f"[database] url: unsupported database {scheme!r} (use sqlite:/// or postgresql://)")
    return f"{driver}://{rest}"


def listener_url(http: HttpSettings) -> str:
    """The base URL of the HTTP listener as configured: what links point to when [site] base_url is empty."""
    host = http.host
    if host in {"", "0.0.0.0"}:
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{http.port}"


# Fields of the settings that come from the database, never from the config file or the environment.
INTERNAL_KEYS: dict[str, frozenset[str]] = {"site": frozenset({"message_id_salt"})}

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
        known = {f.name for f in dataclasses.fields(section_type)} - INTERNAL_KEYS.get(section_name, frozenset())
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
    return resolve_paths(settings, path.resolve().parent if path is not None else Path.cwd())


def _absolute(value: str, base: Path) -> str:
    return str(base / Path(value).expanduser()) if value else value


def resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative paths (data_dir, outbox, SQLite file, CA files) made absolute against `base`: the directory of
    the config file, so a command means the same files wherever it is run from."""
    site = dataclasses.replace(settings.site, data_dir=_absolute(settings.site.data_dir, base))
    outbound = dataclasses.replace(settings.outbound, outbox_dir=_absolute(settings.outbound.outbox_dir, base),
                                   smtp_ca_file=_absolute(settings.outbound.smtp_ca_file, base))
    imap = dataclasses.replace(settings.imap, ca_file=_absolute(settings.imap.ca_file, base))
    dkim = dataclasses.replace(settings.dkim, private_key_file=_absolute(settings.dkim.private_key_file, base))
    database = settings.database
    prefix = "sqlite+aiosqlite:///"
    if database.url.startswith(prefix):
        path = database.url[len(prefix):].partition("?")
        if path[0] and path[0] != ":memory:":
            database = dataclasses.replace(database, url=prefix + _absolute(path[0], base) + path[1] + path[2])
    return dataclasses.replace(settings, site=site, outbound=outbound, imap=imap, database=database, dkim=dkim)


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite database file, or None for another database (or an in-memory one)."""
    prefix = "sqlite+aiosqlite:///"
    url = settings.database.url
    if not url.startswith(prefix):
        return None
    path = url[len(prefix):].partition("?")[0]
    return None if not path or path == ":memory:" else Path(path)


def validate(settings: Settings) -> None:
    if settings.outbound.transport not in {"outbox", "smtp"}:
        raise ConfigError('[outbound] transport must be "outbox" or "smtp"')
    if not settings.site.domain or "@" in settings.site.domain:
        raise ConfigError("[site] domain must be a bare domain name")
    if settings.smtp.max_message_size <= 0:
        raise ConfigError("[smtp] max_message_size must be positive")
    if settings.smtp.accept not in {"inline", "queue", "auto"}:
        raise ConfigError('[smtp] accept must be "inline", "queue" or "auto"')
    if settings.smtp.queue_workers < 0 or settings.smtp.queue_concurrency <= 0:
        raise ConfigError("[smtp] queue_workers must be 0 or more and queue_concurrency positive")
    if settings.announce.require not in {"dkim_or_confirm", "dkim", "confirm"}:
        raise ConfigError('[announce] require must be "dkim_or_confirm", "dkim" or "confirm"')
    if settings.subscriptions.default_mode not in {"each", "daily", "weekly"}:
        raise ConfigError('[subscriptions] default_mode must be "each", "daily" or "weekly"')
    if settings.subscriptions.confirm_ttl_days <= 0:
        raise ConfigError("[subscriptions] confirm_ttl_days must be positive")
    if settings.http.follow_per_client_per_hour <= 0:
        raise ConfigError("[http] follow_per_client_per_hour must be positive")


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
