"""Every step a route names exists, is named after its module, and is a coroutine function."""

from __future__ import annotations

import inspect

import pytest

from qaflow_mail.mail.addresses import Request
from qaflow_mail.pipeline.routes import ROUTES, has_route, load_step

STEP_NAMES = sorted({name for names in ROUTES.values() for name in names})


@pytest.mark.parametrize("name", STEP_NAMES)
def test_every_routed_step_loads(name: str) -> None:
    step = load_step(name)
    assert step.__name__ == name
    assert inspect.iscoroutinefunction(step)


def test_unhandled_destinations_have_no_route() -> None:
    assert not has_route(Request(category_slug="general"))
