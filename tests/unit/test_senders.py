"""Which broker user may send which message: the roles' syntax and the one table."""

from __future__ import annotations

import re

import pytest

from relayflow.amqp.senders import MAY_SEND, Role, Senders
from relayflow.contracts.messages import BaseMessage
from relayflow.errors import ConfigurationError

SENDERS = Senders.parse(
    " engine = rf-orchestrator, rf-steps ; step=rf-node ;start=rf-gateway,rf-app; "
    "external=rf-external;start=rf-steps"
)


def test_roles_are_read_per_user_and_may_add_up() -> None:
    assert SENDERS.roles["rf-orchestrator"] == {Role.ENGINE}
    assert SENDERS.roles["rf-steps"] == {Role.ENGINE, Role.START}
    assert SENDERS.roles["rf-app"] == {Role.START}


def test_unset_trusts_every_sender() -> None:
    assert Senders.parse("").refusal("StepCommand", None) is None
    assert not Senders.parse(" ; ").checked


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("engine=a;bogus=b", "unknown role 'bogus'"),
        ("engine=", "names no users"),
        ("engine", "names no users"),
    ],
)
def test_a_wrong_setting_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Senders.parse(text)


@pytest.mark.parametrize(
    ("message_type", "user", "allowed"),
    [
        ("StepCommand", "rf-orchestrator", True),
        ("StepCommand", "rf-steps", True),
        ("StepCommand", "rf-node", False),
        ("StepCommand", "rf-gateway", False),
        ("WorkflowEventBatch", "rf-app", False),
        ("WorkflowEventBatch", "rf-orchestrator", True),
        ("StepResult", "rf-node", True),
        ("StepResult", "rf-app", False),
        ("StartWorkflow", "rf-app", True),
        ("StartWorkflow", "rf-node", False),
        ("ExternalRequest", "rf-node", True),
        ("ExternalRequest", "rf-gateway", False),
        ("ExternalReply", "rf-external", True),
        ("ExternalReply", "rf-app", False),
        ("StartWorkflow", "stranger", False),
    ],
)
def test_each_message_type_comes_only_from_its_roles(
    message_type: str, user: str, allowed: bool
) -> None:
    refused = SENDERS.refusal(message_type, user)
    assert (refused is None) is allowed
    if refused is not None:
        assert repr(user) in refused
        assert message_type in refused


def test_a_message_that_names_no_sender_is_refused_once_senders_are_checked() -> None:
    refused = SENDERS.refusal("StartWorkflow", None)
    assert refused is not None
    assert "user_id" in refused


def test_the_table_covers_every_message_type() -> None:
    types: set[str] = set()
    pending: list[type[BaseMessage]] = [BaseMessage]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        field = cls.model_fields.get("type")
        if field is not None and isinstance(field.default, str):
            types.add(field.default)
    # A single event is only ever sent inside a batch; the rest must each have a row.
    assert types - {"WorkflowEvent"} == set(MAY_SEND)


TENANTS = Senders.parse("start=rf-app,rf-gateway", tenants="rf-app = acme, beta ;rf-app=gamma")


def test_tenants_are_read_per_user_and_add_up() -> None:
    assert TENANTS.tenants == {"rf-app": {"acme", "beta", "gamma"}}


@pytest.mark.parametrize(
    ("message_type", "tenant", "user", "allowed"),
    [
        ("StartWorkflow", "acme", "rf-app", True),
        ("StartWorkflow", "other", "rf-app", False),
        # A start without a tenant is the default tenant's, which rf-app does not hold.
        ("StartWorkflow", None, "rf-app", False),
        ("CancelWorkflow", "beta", "rf-app", True),
        # Absent on a cancel means any tenant's workflow: not for a restricted user.
        ("CancelWorkflow", None, "rf-app", False),
        ("SignalWorkflow", "other", "rf-app", False),
        # Users the setting does not list act for every tenant.
        ("StartWorkflow", "other", "rf-gateway", True),
        ("RetryWorkflow", None, "rf-gateway", True),
    ],
)
def test_a_restricted_user_acts_only_for_its_tenants(
    message_type: str, tenant: str | None, user: str, allowed: bool
) -> None:
    refusal = TENANTS.tenant_refusal(message_type, tenant, user)
    assert (refusal is None) is allowed
    if refusal is not None:
        assert "rf-app" in refusal
        assert "RELAYFLOW_BROKER_TENANTS" in refusal


@pytest.mark.parametrize(
    ("roles", "tenants", "says"),
    [
        ("start=a", "a=Acme", "'Acme' (for a) is not a tenant name"),
        ("start=a", "a=", "names no tenants"),
        ("", "a=acme", "needs RELAYFLOW_BROKER_SENDERS"),
    ],
)
def test_a_wrong_tenants_setting_says_what_is_wrong(roles: str, tenants: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        Senders.parse(roles, tenants=tenants)
