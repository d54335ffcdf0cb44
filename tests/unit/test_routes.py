"""Routes are tuples of the step functions themselves, and only pipeline/routes.py imports the steps."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from qaflow_mail.db.models import Source
from qaflow_mail.mail.addresses import ConfirmMembership, Join, Leave, Moderate, NewTopic, Request
from qaflow_mail.pipeline.routes import IMPORT_ROUTES, ROUTES, has_route, steps_for
from qaflow_mail.pipeline.steps.notify_followers import notify_followers
from qaflow_mail.pipeline.steps.rate_limit import rate_limit

PACKAGE = Path(__file__).resolve().parents[2] / "qaflow_mail"
ALL_STEPS = sorted({step for route in (*ROUTES.values(), *IMPORT_ROUTES.values()) for step in route},
                   key=lambda step: step.__name__)


@pytest.mark.parametrize("step", ALL_STEPS, ids=lambda step: step.__name__)
def test_every_routed_step_is_a_coroutine_function(step: object) -> None:
    assert inspect.iscoroutinefunction(step)


def test_unhandled_destinations_have_no_route() -> None:
    assert not has_route(None)


def test_membership_and_moderation_addresses_have_routes_that_drop_automatic_mail_first() -> None:
    for destination in (Request("general"), Join("general"), Leave("general"), ConfirmMembership("x"),
                        Moderate("x")):
        assert has_route(destination)
        assert steps_for(destination, Source.SMTP)[0].__name__ == "guard_loops"


def test_an_import_is_neither_rate_limited_nor_mailed_out() -> None:
    live = steps_for(NewTopic("general"), Source.SMTP)
    imported = steps_for(NewTopic("general"), Source.IMPORT)
    assert rate_limit in live and notify_followers in live
    assert rate_limit not in imported and notify_followers not in imported


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_only_routes_imports_the_steps() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "steps" not in path.parts and path.name != "routes.py"
        and any(name.startswith("qaflow_mail.pipeline.steps") for name in _imported_modules(path))
    ]
    assert offenders == []


EDGES = ("qaflow_mail.pipeline", "qaflow_mail.server", "qaflow_mail.commands", "qaflow_mail.cli")
ABOVE = {
    "mail": (*EDGES, "qaflow_mail.services", "qaflow_mail.outbound", "qaflow_mail.db", "qaflow_mail.deps"),
    "db": (*EDGES, "qaflow_mail.services", "qaflow_mail.outbound", "qaflow_mail.deps"),
    "outbound": (*EDGES, "qaflow_mail.services"),
    "services": EDGES,
}


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_imports_point_down_only(layer: str) -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / layer).rglob("*.py")
        for name in _imported_modules(path)
        if name.startswith(ABOVE[layer])
    ]
    assert offenders == []


def test_the_serving_path_never_imports_evaluation_code() -> None:
    serving = ("server", "pipeline", "outbound", "services", "mail", "db")
    offenders = [
        f"{path.relative_to(PACKAGE)}: {name}"
        for layer in serving
        for path in (PACKAGE / layer).rglob("*.py")
        for name in _imported_modules(path)
        if name.startswith("qaflow_mail.corpus")
    ]
    assert offenders == []
