"""keep_for_postmaster: mail to postmaster@ is always taken, whoever sent it and whatever it holds."""

from __future__ import annotations

import pytest

from qaflow_mail.db.models import Disposition
from qaflow_mail.mail.addresses import Postmaster
from qaflow_mail.pipeline import Outcome
from qaflow_mail.pipeline.steps.keep_for_postmaster import keep_for_postmaster
from qaflow_mail.replies import OK
from tests.unit.steps.conftest import DOMAIN, MakeContext


@pytest.mark.parametrize("headers", [
    {},
    {"From": "Unknown <nobody@elsewhere.example>", "Auto-Submitted": "auto-replied"},
    {"From": None},
], ids=["person", "auto-reply", "no-from"])
async def test_postmaster_mail_is_accepted_for_the_admins(make_context: MakeContext, headers: dict[str, str]) -> None:
    ctx = make_context(headers, destination=Postmaster(), recipient=f"postmaster@{DOMAIN}")

    result = await keep_for_postmaster(ctx)

    assert isinstance(result, Outcome)
    assert result.disposition == Disposition.ACCEPTED
    assert result.reply == OK
    assert result.post_id is None
    assert "postmaster" in result.reason
