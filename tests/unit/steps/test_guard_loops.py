"""guard_loops / guard_imported_loops: automatic mail never becomes a post. A live post treats list markers
(Precedence: list/bulk) as automatic; an archive import, where every message carries them, does not."""

from __future__ import annotations

import pytest

from qaflow_mail.db.models import Disposition, Source
from qaflow_mail.pipeline import Context, Outcome, Step
from qaflow_mail.pipeline.steps.guard_loops import guard_imported_loops, guard_loops
from qaflow_mail.replies import OK
from tests.unit.steps.conftest import DOMAIN, MakeContext, passed


def assert_discarded(result: Context | Outcome, kind: str) -> Outcome:
    assert isinstance(result, Outcome), f"expected a discard, the step passed on {result!r}"
    assert result.disposition == Disposition.DISCARDED
    assert result.reply == OK  # discarded mail is answered 250: nothing bounces back to a robot
    assert result.reason.startswith(kind), result.reason
    return result


@pytest.mark.parametrize("guard", [guard_loops, guard_imported_loops])
async def test_mail_a_person_wrote_passes_unchanged(make_context: MakeContext, guard: Step) -> None:
    ctx = make_context()

    assert passed(await guard(ctx)) is ctx


async def test_an_auto_reply_is_discarded(make_context: MakeContext) -> None:
    ctx = make_context({"Auto-Submitted": "auto-replied", "Subject": "Out of office"})

    result = assert_discarded(await guard_loops(ctx), "auto_reply")

    assert "Auto-Submitted: auto-replied" in result.reason


async def test_an_auto_reply_is_discarded_from_an_archive_too(make_context: MakeContext) -> None:
    ctx = make_context({"Auto-Submitted": "auto-replied"}, source=Source.IMPORT)

    result = assert_discarded(await guard_imported_loops(ctx), "auto_reply")

    assert "Auto-Submitted: auto-replied" in result.reason


async def test_auto_submitted_no_is_a_person(make_context: MakeContext) -> None:
    ctx = make_context({"Auto-Submitted": "no"})

    assert passed(await guard_loops(ctx)) is ctx


async def test_list_mail_is_discarded_live(make_context: MakeContext) -> None:
    ctx = make_context({"Precedence": "list"})

    result = assert_discarded(await guard_loops(ctx), "auto_reply")

    assert "Precedence: list" in result.reason


@pytest.mark.parametrize("precedence", ["list", "bulk"])
async def test_list_mail_is_kept_when_importing_an_archive(make_context: MakeContext, precedence: str) -> None:
    ctx = make_context({"Precedence": precedence}, source=Source.IMPORT)

    assert passed(await guard_imported_loops(ctx)) is ctx


async def test_our_own_list_mail_coming_back_is_a_loop(make_context: MakeContext) -> None:
    ctx = make_context({"List-Id": f"General <general.{DOMAIN}>"})

    assert_discarded(await guard_loops(ctx), "loop")


async def test_a_null_envelope_sender_is_automatic(make_context: MakeContext) -> None:
    ctx = make_context(envelope_from="<>")

    assert_discarded(await guard_loops(ctx), "auto_reply")


async def test_our_loop_header_is_a_loop_even_from_an_archive(make_context: MakeContext) -> None:
    ctx = make_context({"X-Loop": f"qaflow@{DOMAIN}"}, source=Source.IMPORT)

    result = assert_discarded(await guard_imported_loops(ctx), "loop")

    assert "X-Loop" in result.reason
