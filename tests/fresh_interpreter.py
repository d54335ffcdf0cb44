"""What a fresh interpreter has imported after running some code: this test process has imported everything."""

from __future__ import annotations

import json
import subprocess
import sys

MIGRATION_STACK = {"alembic", "mako", "pygments"}  # what a serving process need not load (11 MB resident)


def packages_loaded_by(code: str, *args: str) -> set[str]:
    """The top-level packages imported once `code` has run (with `args` in sys.argv[1:]) in a new interpreter."""
    report = "\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted({m.split('.')[0] for m in _sys.modules})))"
    result = subprocess.run([sys.executable, "-c", code + report, *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))
