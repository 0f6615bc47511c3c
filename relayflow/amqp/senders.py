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

Tenants: `RELAYFLOW_BROKER_TENANTS` (`rf-acme=acme;rf-partner=beta,gamma`) restricts a broker user
to the tenants it names — it may start runs only of those (a start without a tenant is the default
tenant's), and its cancels, retries and signals must name one of them (the orchestrator then
refuses them for any other tenant's workflow). A user it does not list acts for every tenant, as
the gateway does (it names its caller's tenant itself). It needs the senders checked: only then
is the `user_id` of every message known.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from relayflow.contracts import DEFAULT_TENANT, TENANT_PATTERN
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
    """The roles of each broker user; empty: every sender is trusted (development). `tenants`:
    the users restricted to some tenants, and to which."""

    roles: Mapping[str, frozenset[Role]] = field(default_factory=dict)
    tenants: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, tenants: str = "") -> Senders:
        """`engine=a,b;step=c` (whitespace ignored); a user may have several roles. `tenants`:
        `user=tenant1,tenant2;user2=tenant3`."""
        roles: dict[str, set[Role]] = {}
        for name, listed in _pairs("RELAYFLOW_BROKER_SENDERS", text, "users"):
            try:
                role = Role(name)
            except ValueError:
                raise ConfigurationError(
                    f"RELAYFLOW_BROKER_SENDERS: unknown role {name!r} "
                    f"(roles: {', '.join(r.value for r in Role)})"
                ) from None
            for user in listed:
                roles.setdefault(user, set()).add(role)
        restricted: dict[str, frozenset[str]] = {}
        for user, listed in _pairs("RELAYFLOW_BROKER_TENANTS", tenants, "tenants"):
            wrong = [t for t in listed if not re.fullmatch(TENANT_PATTERN, t)]
            if wrong:
                raise ConfigurationError(
                    f"RELAYFLOW_BROKER_TENANTS: {wrong[0]!r} (for {user}) is not a tenant name: "
                    "1 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
                )
            restricted[user] = restricted.get(user, frozenset()) | frozenset(listed)
        if restricted and not roles:
            raise ConfigurationError(
                "RELAYFLOW_BROKER_TENANTS needs RELAYFLOW_BROKER_SENDERS: without it no message "
                "says for sure which broker user sent it"
            )
        return cls({user: frozenset(r) for user, r in roles.items()}, restricted)

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

    def tenant_refusal(
        self, message_type: str, tenant: str | None, user_id: str | None
    ) -> str | None:
        """Why a start, cancel, retry or signal naming `tenant` (its field; None: absent) must
        not be applied for `user_id`, or None if it may; other messages name no tenant."""
        permitted = self.tenants.get(user_id or "")
        if permitted is None:
            return None
        if message_type == "StartWorkflow":
            tenant = tenant or DEFAULT_TENANT
        elif tenant is None:
            return (
                f"broker user {user_id!r} acts only for tenants {', '.join(sorted(permitted))} "
                f"(RELAYFLOW_BROKER_TENANTS): its {message_type} must name one in `tenant`"
            )
        if tenant in permitted:
            return None
        return (
            f"broker user {user_id!r} may not act for tenant {tenant!r} (its tenants: "
            f"{', '.join(sorted(permitted))}; RELAYFLOW_BROKER_TENANTS)"
        )


def _pairs(setting: str, text: str, what: str) -> list[tuple[str, list[str]]]:
    """`name=a,b;name2=c` as (name, [a, b]), …; whitespace ignored."""
    pairs = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, values = part.partition("=")
        listed = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not listed or not name.strip():
            raise ConfigurationError(f"{setting}: {part!r} names no {what} (write name=a,b;…)")
        pairs.append((name.strip(), listed))
    return pairs
