"""The step SDK without a broker: declarations, input models, and the rules for a command that
meets an invocation it could not claim."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from apps.form_submission import steps as form_submission
from relayflow.contracts import ErrorInfo, StepCommand, StepResultStatus
from relayflow.errors import DefinitionError, StepError
from relayflow.steps import (
    Invocation,
    InvocationStatus,
    StepContext,
    StepContextError,
    StepRegistry,
    Verdict,
    decide,
    result_for,
)
from relayflow.steps.body import error_from


class Item(BaseModel):
    value: int


async def _publish(*_: Any) -> None:
    return None


def test_input_model_comes_from_the_annotation() -> None:
    """Bodies declare their input once, in the StepContext type argument."""
    steps = StepRegistry()

    @steps.step("typed")
    async def typed(ctx: StepContext[Item]) -> int:
        return ctx.input.value

    @steps.step("untyped")
    async def untyped(ctx: StepContext[Any]) -> None:
        return None

    typed_definition, untyped_definition = steps.get("typed"), steps.get("untyped")
    assert typed_definition is not None
    assert untyped_definition is not None
    assert typed_definition.parse_input({"value": "3"}) == Item(value=3)
    with pytest.raises(ValidationError):
        typed_definition.parse_input({"value": "three"})
    assert untyped_definition.parse_input({"anything": 1}) == {"anything": 1}


def test_input_model_may_be_given_explicitly() -> None:
    """`input_model=` wins over the annotation, for bodies whose types cannot be resolved."""
    steps = StepRegistry()

    @steps.step("explicit", input_model=Item)
    async def explicit(ctx: StepContext[Any]) -> None:
        return None

    definition = steps.get("explicit")
    assert definition is not None
    assert definition.parse_input({"value": 1}) == Item(value=1)


def test_definition_mistakes_fail_at_import() -> None:
    """A duplicate name, a bad name or a sync body is a start-up error, not a runtime surprise."""
    steps = StepRegistry()

    @steps.step("once")
    async def once(ctx: StepContext[Item]) -> None:
        return None

    with pytest.raises(DefinitionError, match="registered twice"):
        steps.step("once")(once)
    with pytest.raises(DefinitionError, match="not a valid step name"):
        steps.step("no spaces")
    with pytest.raises(DefinitionError, match="async def"):
        steps.step("sync")(lambda ctx: None)  # type: ignore[arg-type,return-value]  # on purpose
    with pytest.raises(DefinitionError, match="no step body"):
        steps.select(["once", "missing"])


def test_connection_is_only_for_transactional_steps() -> None:
    """A body that forgot transactional=True is told so, instead of writing outside the
    transaction that records its success."""
    ctx: StepContext[Item] = StepContext(
        workflow_id="wf",
        workflow_name="w",
        step_name="s",
        step_key="0",
        attempt=1,
        input=Item(value=1),
        dependencies={},
        publish=_publish,
    )
    with pytest.raises(StepContextError, match="transactional=True"):
        _ = ctx.connection


def test_seed_module_offers_every_task_of_the_seed_workflow() -> None:
    """The default step service serves every task step of formSubmission, and the transactional
    ones are the ones with database side effects."""
    steps = form_submission.steps
    assert steps.names() == ["finalize", "persist", "publishToMQ", "validate"]
    assert {d.name for d in steps if d.transactional} == {"persist", "finalize"}
    # Its table is its own migration set's, applied by the step service that serves it.
    assert steps.migrations == ("apps.form_submission",)


def test_errors_become_data() -> None:
    """Retryability travels with the failure, so the orchestrator need not guess."""
    assert error_from(StepError("no", type="Refused", non_retryable=True)) == ErrorInfo(
        type="Refused", message="no", retryable=False
    )
    assert error_from(KeyError("k")) == ErrorInfo(type="KeyError", message="'k'", retryable=True)


NOW = datetime(2024, 1, 1, tzinfo=UTC)


def _row(status: InvocationStatus, attempt: int, lease: float | None = None) -> Invocation:
    settled = status is not InvocationStatus.RUNNING
    return Invocation(
        status=status,
        attempt=attempt,
        executions=1,
        lease_owner=None if settled else "other",
        output={"ok": True} if status is InvocationStatus.SUCCEEDED else None,
        error=(
            ErrorInfo(type="Boom", message="boom") if status is InvocationStatus.FAILED else None
        ),
        started_at=NOW,
        finished_at=NOW if settled else None,
        lease_remaining=lease,
    )


def _command(attempt: int) -> StepCommand:
    return StepCommand(
        message_id=f"cmd:wf:s:0:{attempt}",
        workflow_id="wf",
        workflow_name="w",
        step_name="s",
        attempt=attempt,
        input={},
    )


@pytest.mark.parametrize(
    ("row", "attempt", "verdict"),
    [
        (_row(InvocationStatus.SUCCEEDED, 1), 1, Verdict.REPUBLISH),
        (_row(InvocationStatus.SUCCEEDED, 1), 3, Verdict.REPUBLISH),
        (_row(InvocationStatus.FAILED, 2), 2, Verdict.REPUBLISH),
        (_row(InvocationStatus.FAILED, 2), 1, Verdict.REPUBLISH),
        (_row(InvocationStatus.FAILED, 1), 2, Verdict.CLAIM),
        (_row(InvocationStatus.RUNNING, 1, lease=5.0), 1, Verdict.WAIT),
        (_row(InvocationStatus.RUNNING, 1, lease=5.0), 2, Verdict.WAIT),
        (_row(InvocationStatus.RUNNING, 1, lease=-1.0), 1, Verdict.CLAIM),
        (_row(InvocationStatus.RUNNING, 2, lease=-1.0), 1, Verdict.STALE),
    ],
)
def test_decide(row: Invocation, attempt: int, verdict: Verdict) -> None:
    """Each row state a duplicate can meet has exactly one answer: never run a settled step,
    never run beside a live holder."""
    assert decide(row, _command(attempt)) is verdict


def test_republished_results_are_deterministic() -> None:
    """A republished result is the same message (id and body), so the orchestrator dedupes it;
    a success answers the asking attempt, a failure names the attempt that failed."""
    succeeded = _row(InvocationStatus.SUCCEEDED, 1)
    assert result_for(_command(1), succeeded) == result_for(_command(1), succeeded)
    retried = result_for(_command(2), succeeded)
    assert (retried.message_id, retried.attempt, retried.status) == (
        "res:wf:s:0:2",
        2,
        StepResultStatus.SUCCEEDED,
    )
    failed = result_for(_command(1), _row(InvocationStatus.FAILED, 2))
    assert (failed.message_id, failed.attempt, failed.error) == (
        "res:wf:s:0:2",
        2,
        ErrorInfo(type="Boom", message="boom"),
    )
