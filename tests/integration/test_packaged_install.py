"""A wheel built from the checkout carries its templates and migrations: installed elsewhere, it renders mail
and creates a database without the source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_render import SAMPLE_CONTEXTS

REPO = Path(__file__).resolve().parents[2]

RENDER_SCRIPT = """
import json, sys
import qaflow_mail
from qaflow_mail.outbound.render import Renderer, TEMPLATES_DIR
rendered = Renderer().render("notify/post", json.loads(sys.argv[1]))
print(json.dumps({"module": qaflow_mail.__file__, "templates": str(TEMPLATES_DIR),
                  "subject": rendered.subject, "text": rendered.text, "html": rendered.html}))
"""


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout installed (without its dependencies, which this venv has) into a bare folder."""
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(work / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=600, cwd=work,
    )
    assert built.returncode == 0, built.stderr
    wheels = list((work / "dist").glob("qaflow_mail-*.whl"))
    assert len(wheels) == 1, wheels
    target = work / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheels[0])],
        capture_output=True, text=True, timeout=300, cwd=work,
    )
    assert installed.returncode == 0, installed.stderr
    return target


def _run_outside(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QAFLOW_")}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the checkout
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_wheel_renders_a_notification_outside_the_checkout(installed_wheel: Path, tmp_path: Path) -> None:
    context = json.dumps(SAMPLE_CONTEXTS["notify/post"])
    result = _run_outside(installed_wheel, "-c", RENDER_SCRIPT, context, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["module"].startswith(str(installed_wheel)), out["module"]
    assert out["templates"].startswith(str(installed_wheel)), out["templates"]
    assert "How do I parse mail?" in out["subject"]
    assert "Use the email package." in out["text"]
    assert out["html"] and "<p>" in out["html"]


def test_wheel_creates_a_database_and_knows_its_version(installed_wheel: Path, tmp_path: Path) -> None:
    config = tmp_path / "etc" / "qaflow.toml"
    config.parent.mkdir()
    config.write_text('[site]\ndata_dir = "state"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    upgrade = _run_outside(installed_wheel, "-m", "qaflow_mail", "--config", str(config), "db", "upgrade",
                           cwd=elsewhere)
    assert upgrade.returncode == 0, upgrade.stderr
    assert (tmp_path / "etc" / "state" / "qaflow.db").is_file()  # relative to the config file, not the cwd
    assert not any(elsewhere.iterdir())
    version = _run_outside(installed_wheel, "-m", "qaflow_mail", "--version", cwd=elsewhere)
    assert version.returncode == 0 and version.stdout.startswith("qaflow-mail ")
