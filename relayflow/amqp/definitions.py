"""Least-privilege broker users for one namespace, as a RabbitMQ definitions document
(`rabbitmqctl import_definitions FILE`, or `load_definitions` in rabbitmq.conf).

One user per service, each allowed only the exchanges and queues its service uses; the roles
that `RELAYFLOW_BROKER_SENDERS` gives them (`relayflow.amqp.senders`) decide which messages
their consumers accept from whom. RabbitMQ checks three rights per resource name (regular
expressions): *configure* to declare or delete, *write* to publish to an exchange or bind a queue,
*read* to consume from a queue or bind from an exchange. Declaring a queue that dead-letters also
takes read on it, so a service that declared the whole topology would need read on every queue:
instead the definitions create the topology (exchanges, queues, bindings, for the workflows'
steps), and a service whose user may not declare it checks that it exists
(`Topology.ensure`). So no service user may configure anything but its own server-named queue
(the gateway's), and each reads and writes only what it uses:

    orchestrator  publishes to <ns>, <ns>.events, <ns>.dlx    reads <ns>.orchestrator
    steps         <ns>, <ns>.events, <ns>.dlx (it advances    <ns>.step.*
                  workflows; with --isolated-steps: no events)
    gateway       <ns>, <ns>.dlx                              its own events queue,
                                                              <ns>.dead-letters (operator pages)
    external      <ns>, <ns>.dlx                              <ns>.external
    app           <ns> only (starts)                          nothing
    admin         <ns>, <ns>.dlx (redrive, signals)           <ns>.dead-letters
    step-<body>   <ns>, <ns>.dlx (results only)               <ns>.step.<body>

The last is one per step body that no Python step service serves (`foreign_steps`): a program in
another language consuming that one queue and answering StepResults, with the `step` role (it
may send results, never commands or events).

The gateway reads the dead-letter queue for its operator pages (`/ui/dead-letters`: browsing
takes messages unacknowledged and hands them back, re-driving acks them), which its API keys'
roles then guard: `read` to look, `operator` to re-drive. Definitions loaded before it had that
right leave the pages saying the broker refused; load these again. Queue depths on
`/ui/overview` are passive declarations, which take no right.

A step added later needs its queue: run the setup again and load the new definitions (loading
is additive; the users' passwords change).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relayflow.amqp.senders import Role
from relayflow.topology import Topology

NOTHING = "^$"


@dataclass(frozen=True, slots=True)
class BrokerUser:
    service: str
    name: str
    password: str
    roles: tuple[Role, ...]
    configure: str
    write: str
    read: str


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64 of a 4-byte salt and
    SHA-256(salt + password)."""
    salt = salt if salt is not None else os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def broker_users(
    namespace: str,
    *,
    prefix: str = "rf",
    isolated_steps: bool = False,
    foreign_steps: Iterable[str] = (),
) -> list[BrokerUser]:
    """The users of `namespace`, with fresh passwords; one more per body of `foreign_steps`."""
    ns = re.escape(namespace)
    main, events, dlx = ns, f"{ns}\\.events", f"{ns}\\.dlx"
    # The gateway's events queue (exclusive, per connection) is named by aio-pika (`amq_<uuid>`)
    # or by the server (`amq.gen-…`).
    own_queue = "amq(_|\\.gen-).*"

    def any_of(*names: str) -> str:
        return f"^({'|'.join(names)})$"

    def user(
        service: str, roles: tuple[Role, ...], write: str, read: str, configure: str = NOTHING
    ) -> BrokerUser:
        return BrokerUser(
            service=service,
            name=f"{prefix}-{namespace}-{service}",
            password=secrets.token_urlsafe(24),
            roles=roles,
            configure=configure,
            write=write,
            read=read,
        )

    step_writes = (main, dlx) if isolated_steps else (main, events, dlx)
    return [
        user(
            "orchestrator",
            (Role.ENGINE,),
            any_of(main, events, dlx),
            any_of(f"{ns}\\.orchestrator"),
        ),
        user(
            "steps",
            (Role.STEP,) if isolated_steps else (Role.ENGINE,),
            any_of(*step_writes),
            any_of(f"{ns}\\.step\\..+"),
        ),
        user(
            "gateway",
            (Role.START,),
            any_of(main, dlx, own_queue),
            # Its own events queue, and the dead letters its operator pages browse and re-drive.
            any_of(events, own_queue, f"{ns}\\.dead-letters"),
            configure=any_of(own_queue),
        ),
        user("external", (Role.EXTERNAL,), any_of(main, dlx), any_of(f"{ns}\\.external")),
        user("app", (Role.START,), any_of(main), NOTHING),
        user("admin", (Role.START,), any_of(main, dlx), any_of(f"{ns}\\.dead-letters")),
        *(
            user(
                f"step-{body}",
                (Role.STEP,),
                any_of(main, dlx),
                any_of(f"{ns}\\.step\\.{re.escape(body)}"),
            )
            for body in sorted(set(foreign_steps))
        ),
    ]


def senders_setting(users: list[BrokerUser]) -> str:
    """The `RELAYFLOW_BROKER_SENDERS` value that gives each user its roles."""
    by_role: dict[Role, list[str]] = {}
    for user in users:
        for role in user.roles:
            by_role.setdefault(role, []).append(user.name)
    return ";".join(f"{role}={','.join(names)}" for role, names in sorted(by_role.items()))


def definitions(
    users: list[BrokerUser], vhost: str, topology: Topology, step_names: Iterable[str]
) -> dict[str, Any]:
    """The definitions document: the vhost, the topology of `step_names`' workflows, the
    users (hashed passwords) and their rights."""
    work = dict(topology.work_queue_arguments())
    bindings = [
        {
            "source": topology.exchange,
            "vhost": vhost,
            "destination": queue,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": {},
        }
        for queue, keys in topology.queue_bindings(step_names).items()
        for key in keys
    ]
    bindings.append(
        {
            "source": topology.dead_letter_exchange,
            "vhost": vhost,
            "destination": topology.dead_letter_queue,
            "destination_type": "queue",
            "routing_key": "",
            "arguments": {},
        }
    )

    def exchange(name: str, kind: str) -> dict[str, Any]:
        return {
            "name": name,
            "vhost": vhost,
            "type": kind,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }

    def queue(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "vhost": vhost,
            "durable": True,
            "auto_delete": False,
            "arguments": dict(arguments),
        }

    return {
        "vhosts": [{"name": vhost}],
        "users": [
            {
                "name": u.name,
                "password_hash": password_hash(u.password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": "",
            }
            for u in users
        ],
        "permissions": [
            {
                "user": u.name,
                "vhost": vhost,
                "configure": u.configure,
                "write": u.write,
                "read": u.read,
            }
            for u in users
        ],
        "exchanges": [
            exchange(topology.exchange, "direct"),
            exchange(topology.events_exchange, "fanout"),
            exchange(topology.dead_letter_exchange, "fanout"),
        ],
        "queues": [
            queue(topology.dead_letter_queue, topology.queue_arguments()),
            *(queue(name, work) for name in topology.queue_bindings(step_names)),
        ],
        "bindings": bindings,
    }
