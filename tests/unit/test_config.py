from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from qaflow_mail.config import (
    INTERNAL_KEYS,
    ConfigError,
    Settings,
    ensure_token_secret,
    load_settings,
    redacted,
    resolve_paths,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "qaflow.example.toml"


def test_example_config_lists_every_key_with_its_default() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    for section in dataclasses.fields(Settings):
        # the section's own defaults, before Settings fills in the ones that follow other settings
        values = dataclasses.asdict(section.default_factory())  # type: ignore[misc]
        for internal in INTERNAL_KEYS.get(section.name, ()):  # read from the database, never configured
            del values[internal]
        assert set(example[section.name]) == set(values), section.name
        for key, value in values.items():
            assert example[section.name][key] == value, f"[{section.name}] {key}"


def test_example_config_loads() -> None:
    base = EXAMPLE.resolve().parent
    assert load_settings(EXAMPLE, {}) == resolve_paths(Settings(), base)


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[smtp]\nport = 2000\n[site]\ndomain = "a.test"\n')
    settings = load_settings(path, {"QAFLOW_SMTP__PORT": "2525", "QAFLOW_HTTP__ENABLED": "false"})
    assert settings.smtp.port == 2525
    assert settings.site.domain == "a.test"
    assert settings.http.enabled is False


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("[smtp]\nprot = 1\n", {}, "unknown key"),
        ("[smtpp]\nport = 1\n", {}, "unknown section"),
        ("", {"QAFLOW_SMTP__PORT": "abc"}, "expected an integer"),
        ('[outbound]\ntransport = "carrier-pigeon"\n', {}, "transport"),
        ("[smtp\n", {}, "c.toml"),
    ],
)
def test_bad_config_is_explained(tmp_path: Path, content: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env)


def test_token_secret_generated_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings(None, {"QAFLOW_SITE__DATA_DIR": str(tmp_path)})
    first = ensure_token_secret(settings)
    second = ensure_token_secret(settings)
    assert first.tokens.secret and first.tokens.secret == second.tokens.secret
    assert (tmp_path / "token-secret").stat().st_mode & 0o077 == 0
    assert redacted(first)["tokens"]["secret"] == "***"


def test_a_shared_database_needs_a_configured_token_secret(tmp_path: Path) -> None:
    settings = load_settings(None, {"QAFLOW_SITE__DATA_DIR": str(tmp_path),
                                    "QAFLOW_DATABASE__URL": "postgresql+asyncpg://db.example/qaflow"})
    with pytest.raises(ConfigError, match="secret must be set"):
        ensure_token_secret(settings)
    assert not (tmp_path / "token-secret").exists()
