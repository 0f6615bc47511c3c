"""Which broker user may send which message: the roles' syntax and the one table."""

from __future__ import annotations

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
