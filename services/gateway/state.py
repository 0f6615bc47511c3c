"""What the lifespan opens and every handler uses, in one typed place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from starlette.requests import Request

from relayflow.amqp import Publisher
from relayflow.auth import Action, Identity, Role, allows
from relayflow.contracts import DEFAULT_TENANT
from relayflow.hops import HopTrace
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry
from services.gateway.events import EventHub
from services.gateway.limits import Limits
from services.gateway.reads import Reads
from services.gateway.settings import GatewaySettings
from services.gateway.store import GatewayStore

if TYPE_CHECKING:  # access.py reads the state of a request: imported for the type only
    from services.gateway.access import Access

STATE_KEY = "gateway"
# Who a request comes from (services.gateway.access), for the handlers that act on its behalf.
_CALLER_KEY = "relayflow.caller"
# What a person's caller id starts with: never an API key's id (base32, no colon).
PERSON_PREFIX = "oidc:"


@dataclass(frozen=True, slots=True)
class Caller:
    """The credential behind a request: `id` names it in logs, limits and tokens (an API key's
    id, or `oidc:<sub>` for a person's OIDC token), `tenant` is whose workflows it sees and
    starts, `role` what it may do. `expires` (Unix seconds) is when the credential ends by
    itself, an OIDC token's `exp`; None for an API key, whose row is read again instead. No
    cookie or token made for a caller outlives it (`services.gateway.carried`)."""

    id: str
    tenant: str
    role: Role
    expires: int | None = None

    @classmethod
    def person(cls, identity: Identity) -> Caller:
        """The caller a verified OIDC token names (logs show its subject, nothing more)."""
        return cls(
            PERSON_PREFIX + identity.subject, identity.tenant, identity.role, identity.expires
        )


@dataclass(frozen=True, slots=True)
class GatewayState:
    settings: GatewaySettings
    registry: WorkflowRegistry
    # The workflow `POST /submit` and the dashboard's form start; None: both are off.
    submit_workflow: str | None
    topology: Topology
    pool: asyncpg.Pool[Any]
    # On the primary: writes, credentials, and reads whose answer must be current.
    store: GatewayStore
    # Lists, details and stream replays, from a replica where one is set (services.gateway.reads).
    reads: Reads
    connection: AbstractRobustConnection
    publisher: Publisher
    hub: EventHub
    # Whether requests need an API key, decided at start-up (services.gateway.access).
    access: Access
    # What one caller may send and ask (services.gateway.limits).
    limits: Limits
    hops: HopTrace = field(default_factory=HopTrace)
    # One browse of the dead-letter queue at a time from this process: two at once would each
    # see only what the other does not hold (relayflow.amqp.dead_letters).
    dead_letters: asyncio.Lock = field(default_factory=asyncio.Lock)


def gateway_state(request: Request) -> GatewayState:
    state = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(state, GatewayState):  # pragma: no cover - a wiring mistake
        raise TypeError("the gateway lifespan has not run")
    return state


def set_caller(request: Request, caller: Caller | None) -> None:
    request.scope[_CALLER_KEY] = caller


def caller_of(request: Request) -> Caller | None:
    """Who is behind this request (Bearer, cookie or stream token); None while the gateway runs
    open."""
    caller = request.scope.get(_CALLER_KEY)
    return caller if isinstance(caller, Caller) else None


def tenant_of(request: Request) -> str | None:
    """Whose workflows this request sees and acts on: its caller's tenant; None (every
    tenant's) while the gateway runs open. Another tenant's workflow is not found (404)."""
    caller = caller_of(request)
    return None if caller is None else caller.tenant


def starting_tenant(request: Request) -> str:
    """Whose the workflows this request starts are: its caller's tenant, else the default."""
    caller = caller_of(request)
    return DEFAULT_TENANT if caller is None else caller.tenant


def sees_namespace(request: Request) -> bool:
    """Whether this request may see what belongs to the whole namespace rather than a tenant —
    the dead-letter queue (any tenant's messages) and the broker's queues: while the gateway runs
    open, or for a caller of the default tenant (the namespace's own operators). Another tenant's
    caller sees its own workflows only."""
    caller = caller_of(request)
    return caller is None or caller.tenant == DEFAULT_TENANT


def may(request: Request, action: Action) -> bool:
    """Whether this request's caller may do `action` (anyone, while the gateway runs open)."""
    caller = caller_of(request)
    return caller is None or allows(caller.role, action)
