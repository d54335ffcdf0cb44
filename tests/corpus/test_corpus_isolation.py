"""The evaluation code in qaflow_mail.corpus stays off the serving path: only check-corpus, bench and tests use it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVING_PACKAGES = ("qaflow_mail.server", "qaflow_mail.pipeline", "qaflow_mail.outbound", "qaflow_mail.services")

# Run in a fresh interpreter: this test session has imported qaflow_mail.corpus already.
PROBE = f"""
import importlib, pkgutil, sys
for package in {SERVING_PACKAGES!r}:
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
importlib.import_module("qaflow_mail.importer")
print("\\n".join(sorted(name for name in sys.modules if name.startswith("qaflow_mail.corpus"))))
"""


def test_serving_code_does_not_import_the_corpus_tools() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
