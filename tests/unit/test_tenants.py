"""Tenants through the pure machine and the wire: a start names its tenant (absent: the
default's), a run keeps it, its events and its children carry it, a start or a command for
another tenant's workflow is refused, and an idempotency key names a run per tenant."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relayflow import machine
from relayflow.contracts import (
    DEFAULT_TENANT,
    CancelWorkflow,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    StepResult,
    StepResultStatus,
    encode,
    workflow_id_for_key,
)
from relayflow.machine import Ignored, Rejected, StartChild, Transition
from relayflow.model import WorkflowStatus
from tests.unit.test_child_workflows import NOTE, PARENT

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def start(tenant: str | None, workflow_id: str = "wf_p") -> StartWorkflow:
    return StartWorkflow(
        message_id="s", workflow_id=workflow_id, workflow_name="parent", input={}, tenant=tenant
    )


def started(tenant: str | None) -> Transition:
    outcome = machine.start(PARENT, start(tenant), NOW)
    assert isinstance(outcome, Transition), outcome
    return outcome


def test_a_run_is_the_tenant_its_start_names_and_its_events_say_so() -> None:
    t = started("acme")
    assert t.state.tenant == "acme"
    assert {event.tenant for event in t.events} == {"acme"}


def test_a_start_without_a_tenant_is_the_default_tenants_and_reads_as_before() -> None:
    t = started(None)
    assert t.state.tenant == DEFAULT_TENANT
    assert all(event.tenant is None for event in t.events)
    assert b"tenant" not in encode(t.events[0])


def test_a_child_is_its_parents_tenants() -> None:
    t = started("acme")
    prepared = StepResult(
        message_id="r",
        workflow_id="wf_p",
        step_name="prepare",
        attempt=1,
        status=StepResultStatus.SUCCEEDED,
        output={"text": "hi"},
    )
    advanced = machine.on_step_result(PARENT, t.state, prepared, NOW)
    assert isinstance(advanced, Transition)
    [child_start] = [i.start for i in advanced.intents if isinstance(i, StartChild)]
    assert child_start.tenant == "acme"
    kid = machine.start(NOTE, child_start, NOW)
    assert isinstance(kid, Transition)
    assert kid.state.tenant == "acme"


def test_the_same_start_for_another_tenant_is_a_conflict_not_a_duplicate() -> None:
    state = started("acme").state
    assert isinstance(machine.duplicate_start(state, start("acme")), Ignored)
    refused = machine.duplicate_start(state, start("beta"))
    assert isinstance(refused, Rejected)
    assert "not tenant 'beta'" in refused.reason
    assert isinstance(machine.duplicate_start(state, start(None)), Rejected)


@pytest.mark.parametrize(
    "message",
    [
        CancelWorkflow(message_id="c", workflow_id="wf_p", tenant="beta"),
        RetryWorkflow(message_id="r", workflow_id="wf_p", tenant="beta"),
        SignalWorkflow(message_id="g", workflow_id="wf_p", signal_name="go", tenant="beta"),
    ],
)
def test_a_command_naming_another_tenant_is_refused(
    message: CancelWorkflow | RetryWorkflow | SignalWorkflow,
) -> None:
    state = started("acme").state
    refused = machine.tenant_refusal(state, message)
    assert isinstance(refused, Rejected)
    assert f"a {message.type} for tenant 'beta'" in refused.reason
    # Naming its own tenant, or none (the gateway in open mode), it goes on to the machine.
    assert machine.tenant_refusal(state, message.model_copy(update={"tenant": "acme"})) is None
    assert machine.tenant_refusal(state, message.model_copy(update={"tenant": None})) is None


def test_a_cancel_of_the_own_tenant_still_cancels() -> None:
    state = started("acme").state
    message = CancelWorkflow(message_id="c", workflow_id="wf_p", tenant="acme")
    assert machine.tenant_refusal(state, message) is None
    outcome = machine.on_cancel(PARENT, state, message, NOW)
    assert isinstance(outcome, Transition)
    assert outcome.state.status is WorkflowStatus.CANCELLED


def test_an_idempotency_key_names_a_run_per_tenant() -> None:
    default = workflow_id_for_key("formSubmission", "k-1")
    # The default tenant's ids are what they were before tenants (published, and in use).
    assert default == workflow_id_for_key("formSubmission", "k-1", DEFAULT_TENANT)
    acme = workflow_id_for_key("formSubmission", "k-1", "acme")
    assert len({default, acme, workflow_id_for_key("formSubmission", "k-1", "beta")}) == 3
    assert acme.startswith("wf_")
    assert len(acme) == 29
