"""Who may send which message over the broker.

RabbitMQ's permissions are per exchange and queue, not per message: a user that may write to
`<ns>` may send any routing key there. So every publisher of ours stamps the AMQP `user_id`
property with the user it connected as — RabbitMQ refuses a message whose `user_id` is not the
sender's own, so the property cannot be forged — and every consumer checks it against
`MAY_SEND`, the one table of which role may send each message type. The roles of the broker
users come from `RELAYFLOW_BROKER_SENDERS` (`engine=rf-orchestrator,rf-steps;step=…;start=…;
external=…`, written by `relayflow broker setup`); unset, anyone may send anything,
as on a development broker where every service is `guest`. A refused message is dead-lettered
with the reason, never applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from relayflow.errors import ConfigurationError


class Role(StrEnum):
    # Advances workflows: the orchestrator, and step services that advance them
    # (RELAYFLOW_STEP_ADVANCE): sends commands, events, child starts and notices.
    ENGINE = "engine"
    # Runs steps and only reports them (a step service with RELAYFLOW_STEP_ADVANCE=false, or
    # one in another language): results, and the requests its bodies send.
    STEP = "step"
    # Starts and steers workflows from outside: the gateway, a program publishing starts.
    START = "start"
    # The external system that answers `ExternalRequest`s.
    EXTERNAL = "external"


ENGINE, STEP, START, EXTERNAL = Role.ENGINE, Role.STEP, Role.START, Role.EXTERNAL

MAY_SEND: Mapping[str, frozenset[Role]] = {
    "StartWorkflow": frozenset({ENGINE, START}),
    "SignalWorkflow": frozenset({ENGINE, START}),
    "CancelWorkflow": frozenset({ENGINE, START}),
    "RetryWorkflow": frozenset({ENGINE, START}),
    "StepResult": frozenset({ENGINE, STEP}),
    "ExternalReply": frozenset({ENGINE, EXTERNAL}),
    "StepCommand": frozenset({ENGINE}),
    "WorkflowEventBatch": frozenset({ENGINE}),
    "ExternalRequest": frozenset({ENGINE, STEP}),
}


@dataclass(frozen=True, slots=True)
class Senders:
    """The roles of each broker user; empty: every sender is trusted (development)."""

    roles: Mapping[str, frozenset[Role]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Senders:
        """`engine=a,b;step=c` (whitespace ignored); a user may have several roles."""
        roles: dict[str, set[Role]] = {}
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            name, sep, users = part.partition("=")
            try:
                role = Role(name.strip())
            except ValueError:
                raise ConfigurationError(
                    f"RELAYFLOW_BROKER_SENDERS: unknown role {name.strip()!r} in {part!r} "
                    f"(roles: {', '.join(r.value for r in Role)})"
                ) from None
            listed = [u.strip() for u in users.split(",") if u.strip()]
            if not sep or not listed:
                raise ConfigurationError(
                    f"RELAYFLOW_BROKER_SENDERS: {part!r} names no users (write {role}=user,...)"
                )
            for user in listed:
                roles.setdefault(user, set()).add(role)
        return cls({user: frozenset(r) for user, r in roles.items()})

    @property
    def checked(self) -> bool:
        return bool(self.roles)

    def refusal(self, message_type: str, user_id: str | None) -> str | None:
        """Why a `message_type` sent by `user_id` (the AMQP property) must not be applied, or
        None if it may."""
        if not self.roles:
            return None
        allowed = MAY_SEND.get(message_type, frozenset())
        if user_id is None:
            return (
                f"a {message_type} without the AMQP user_id property: senders are checked "
                "(RELAYFLOW_BROKER_SENDERS), so a message must say which broker user sent it"
            )
        held = self.roles.get(user_id, frozenset())
        if held & allowed:
            return None
        roles = ", ".join(sorted(held)) or "none"
        may = ", ".join(sorted(allowed)) or "no role"
        return f"broker user {user_id!r} (roles: {roles}) may not send a {message_type} ({may} may)"
