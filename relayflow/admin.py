"""`relayflow-admin`: operator commands over the broker.

    relayflow-admin dead-letters list [--limit N] [--json]
    relayflow-admin dead-letters redrive (--all | --message-id ID ...)
    relayflow-admin workflows cancel ID [--reason TEXT]
    relayflow-admin workflows retry ID [--reason TEXT]
    relayflow-admin workflows signal ID NAME --data JSON [--by WHO] [--idempotency-key K]
    relayflow-admin keys create --tenant T --role submit|read|operator|admin [--name N]
    relayflow-admin keys list [--tenant T] [--json]
    relayflow-admin keys revoke ID
    relayflow-admin broker setup --out FILE [--vhost V] [--host H] [--port P] [--isolated-steps]

`AMQP_URL` and `RELAYFLOW_NAMESPACE` say which broker and which set of queues (as for the
services); `--amqp-url` and `--namespace` override them. `signal` also reads the workflow from
`DATABASE_URL` (`--database-url`) and its definition from `RELAYFLOW_WORKFLOWS`.

Listing browses `<ns>.dead-letters` without consuming: it takes the messages unacknowledged, one
`basic.get` at a time, and hands every one back (nack, requeue) once it has seen them. Re-driving
republishes a dead letter to the exchange and routing key it was dead-lettered from (the
`x-relayflow-exchange`/`x-relayflow-queue` headers of our consumers, or the broker's `x-death`),
confirmed and mandatory, and acknowledges the dead letter only after the broker confirmed the copy.

`workflows signal` publishes a SignalWorkflow on `workflow.signal`, confirmed and mandatory, as the
gateway's `POST /workflows/{id}/signals/{name}` does. When the workflow is in the database and its
definition is loaded here, the signal must be one it declares and `--data` must fit that signal's
model (the error names the field; nothing is sent), and a finished workflow is refused; when it
is not, the signal is sent unchecked, with a warning, and the orchestrator decides (it
dead-letters what it cannot take). `--by` is recorded as `sentBy`. `--idempotency-key` names the
signal id and is recorded with the request as the gateway records it (`relayflow.signal_keys`),
so a resend counts once and the same key with another payload or sender is refused (the key
needs the database: without it nothing is sent).

`keys` manages API keys (`relayflow.auth`) in `DATABASE_URL` (`--database-url`), without the
broker. `create` prints the key alone on stdout, once (it is stored hashed, under
`RELAYFLOW_AUTH_SECRET`, which it needs: the gateway's); what was made goes to stderr. `list`
shows every key but never a secret; `revoke` ends a key at once, and revoking it again changes
nothing.

`broker setup` writes one user per service of the namespace, each with only the rights its
service needs (`relayflow.amqp.definitions`), as a RabbitMQ definitions file to load with
`rabbitmqctl import_definitions FILE`, and prints each service's `AMQP_URL` (the passwords, once)
and the `RELAYFLOW_BROKER_SENDERS` every service is to run with. It needs no broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pydantic import ValidationError

from relayflow.amqp.consumer import QUEUE_HEADER, REASON_HEADER
from relayflow.amqp.definitions import broker_users, definitions, senders_setting
from relayflow.amqp.publisher import broker_user
from relayflow.auth import (
    ApiKey,
    AuthError,
    AuthSettings,
    KeyHasher,
    Role,
    create_key,
    list_keys,
    revoke_key,
)
from relayflow.contracts import (
    CancelWorkflow,
    RetryWorkflow,
    SignalWorkflow,
    describe_path,
    encode,
    new_message_id,
    unstorable,
)
from relayflow.model import FINISHED
from relayflow.settings import Settings
from relayflow.signal_keys import SignalKeyConflict, signal_message_id, signal_target
from relayflow.steps import StepRegistry
from relayflow.topology import CONTROL_KEY, SIGNAL_KEY, Topology
from relayflow.workflow import WorkflowDefinition, WorkflowRegistry

EXCHANGE_HEADER = "x-relayflow-exchange"
DEAD_AT_HEADER = "x-relayflow-dead-lettered-at"
# Headers that describe the dead-lettering, not the message: dropped from a re-driven copy.
_DEAD_LETTER_HEADERS = (
    REASON_HEADER,
    QUEUE_HEADER,
    EXCHANGE_HEADER,
    DEAD_AT_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
)
# Upper bound on one browse: a dead-letter queue larger than this is listed in part.
MAX_BROWSE = 10_000


class AdminError(Exception):
    """A command that cannot be carried out; the message says why."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    type: str
    reason: str
    queue: str
    exchange: str
    routing_key: str
    dead_lettered_at: str | None
    age_seconds: float | None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def describe(message: AbstractIncomingMessage, now: datetime | None = None) -> DeadLetter:
    """Where a dead letter came from and why, from our headers or the broker's `x-death`."""
    headers: Mapping[str, Any] = message.headers or {}
    now = now or datetime.now(UTC)
    deaths = headers.get("x-death")
    death: Mapping[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}
    if REASON_HEADER in headers:
        reason = _text(headers[REASON_HEADER])
        exchange = _text(headers.get(EXCHANGE_HEADER))
        routing_key = _text(headers.get(QUEUE_HEADER))
        queue = routing_key
        at = _text(headers.get(DEAD_AT_HEADER)) or None
    else:
        reason = f"broker: {_text(death.get('reason')) or 'unknown'}"
        exchange = _text(death.get("exchange"))
        keys = death.get("routing-keys") or []
        routing_key = _text(keys[0]) if keys else ""
        queue = _text(death.get("queue"))
        time = death.get("time")
        at = (
            time.replace(tzinfo=time.tzinfo or UTC).isoformat()
            if isinstance(time, datetime)
            else None
        )
    age = None
    if at:
        try:
            age = round((now - datetime.fromisoformat(at)).total_seconds(), 1)
        except ValueError:
            age = None
    return DeadLetter(
        message_id=message.message_id or "",
        type=message.type or "",
        reason=reason,
        queue=queue,
        exchange=exchange,
        routing_key=routing_key,
        dead_lettered_at=at,
        age_seconds=age,
    )


async def _browse(
    channel: AbstractChannel, queue_name: str, limit: int
) -> list[AbstractIncomingMessage]:
    """Take up to `limit` messages unacknowledged; the caller settles every one."""
    queue = await channel.get_queue(queue_name, ensure=True)
    taken: list[AbstractIncomingMessage] = []
    for _ in range(min(limit, MAX_BROWSE)):
        message = await queue.get(no_ack=False, fail=False, timeout=10)
        if message is None:
            break
        taken.append(message)
    return taken


async def list_dead_letters(
    connection: AbstractConnection, topology: Topology, limit: int = 1000
) -> list[DeadLetter]:
    channel = await connection.channel()
    try:
        taken = await _browse(channel, topology.dead_letter_queue, limit)
        letters = [describe(message) for message in taken]
        for message in taken:
            await message.nack(requeue=True)
        return letters
    finally:
        await channel.close()


async def redrive(
    connection: AbstractConnection, topology: Topology, *, message_ids: Sequence[str] | None
) -> list[DeadLetter]:
    """Re-drive the dead letters named (all when `message_ids` is None); returns those sent."""
    channel = await connection.channel()
    publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    wanted = set(message_ids) if message_ids is not None else None
    sent: list[DeadLetter] = []
    try:
        taken = await _browse(channel, topology.dead_letter_queue, MAX_BROWSE)
        for message in taken:
            letter = describe(message)
            if (wanted is not None and letter.message_id not in wanted) or not letter.exchange:
                await message.nack(requeue=True)
                continue
            headers = {
                k: v for k, v in (message.headers or {}).items() if k not in _DEAD_LETTER_HEADERS
            }
            exchange = await publish_channel.get_exchange(letter.exchange, ensure=False)
            try:
                await exchange.publish(
                    aio_pika.Message(
                        message.body,
                        message_id=message.message_id,
                        type=message.type,
                        content_type=message.content_type,
                        correlation_id=message.correlation_id,
                        headers=headers,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        # Sent again by us: consumers that check senders see this user.
                        user_id=broker_user(connection),
                    ),
                    routing_key=letter.routing_key,
                    mandatory=True,
                    timeout=10,
                )
            except Exception:
                await message.nack(requeue=True)
                raise
            await message.ack()
            sent.append(letter)
        if wanted is not None:
            missing = wanted - {letter.message_id for letter in sent}
            if missing:
                raise AdminError(f"no dead letter with message id {', '.join(sorted(missing))}")
        return sent
    finally:
        await publish_channel.close()
        await channel.close()


async def control(
    connection: AbstractConnection, topology: Topology, message: CancelWorkflow | RetryWorkflow
) -> None:
    """Publish a control message to the orchestrator, confirmed and mandatory."""
    await _publish(connection, topology, message, CONTROL_KEY)


async def send_signal(
    connection: AbstractConnection, topology: Topology, message: SignalWorkflow
) -> None:
    """Publish a signal to the orchestrator, confirmed and mandatory."""
    await _publish(connection, topology, message, SIGNAL_KEY)


async def _publish(
    connection: AbstractConnection,
    topology: Topology,
    message: CancelWorkflow | RetryWorkflow | SignalWorkflow,
    routing_key: str,
) -> None:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                encode(message),
                message_id=message.message_id,
                type=message.type,
                content_type="application/json",
                headers={"x-schema-version": message.schema_version},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                user_id=broker_user(connection),
            ),
            routing_key=routing_key,
            mandatory=True,
            timeout=10,
        )
    finally:
        await channel.close()


def checked_payload(
    definition: WorkflowDefinition, workflow_id: str, signal_name: str, data: Any
) -> dict[str, Any]:
    """The payload as the workflow's model for the signal normalises it (by alias), or
    `AdminError` naming the undeclared signal or the fields at fault."""
    model = definition.signals.get(signal_name)
    if model is None:
        declared = ", ".join(sorted(definition.signals)) or "no signals"
        raise AdminError(
            f"workflow {workflow_id} ({definition.name}) declares no signal {signal_name!r}; "
            f"it declares {declared}"
        )
    what = f"signal {signal_name!r} of workflow {definition.name!r}"
    if not isinstance(data, dict):
        raise AdminError(f"the payload of {what} must be a JSON object")
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{describe_path(tuple(error['loc']))}: {error['msg']}"
            for error in exc.errors(include_url=False)[:10]
        )
        raise AdminError(f"invalid payload for {what}: {problems}") from exc
    payload: dict[str, Any] = validated.model_dump(mode="json", by_alias=True)
    found = unstorable(payload)
    if found is not None:
        raise AdminError(f"invalid payload for {what}: {describe_path(found[0])} {found[1]}")
    return payload


async def prepare_signal(
    args: argparse.Namespace, settings: Settings, warn: Callable[[str], None]
) -> SignalWorkflow:
    """The SignalWorkflow the command sends: checked against the workflow's definition when
    the database knows the workflow and the definition is loaded here; `warn` says otherwise.
    With `--idempotency-key`, its id is the one the key names, the key recorded as the gateway
    records it (`relayflow.signal_keys`): the same key with another payload or sender is refused,
    whichever of the two sent it first."""
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise AdminError(f"--data is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AdminError("--data must be a JSON object (the signal's payload)")
    key: str | None = args.idempotency_key
    database_url = args.database_url or settings.database_url
    try:
        conn = await asyncpg.connect(database_url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        if key is not None:
            raise AdminError(
                f"cannot read PostgreSQL ({exc}), where --idempotency-key is recorded; send the "
                "signal once the database answers, or without the key"
            ) from exc
        warn(f"cannot read the workflow from PostgreSQL ({exc}); sending the signal unchecked")
        return _signal(args, new_message_id(), data)
    try:
        payload = await _checked(conn, args, settings, data, warn)
        try:
            message_id = await signal_message_id(
                conn, args.workflow_id, args.signal_name, key, payload=payload, sent_by=args.by
            )
        except SignalKeyConflict as exc:
            raise AdminError(str(exc)) from None
    finally:
        await conn.close()
    return _signal(args, message_id, payload)


async def _checked(
    conn: asyncpg.Connection[Any],
    args: argparse.Namespace,
    settings: Settings,
    data: dict[str, Any],
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """The payload as the run's definition validates it, or `data` unchecked (with a warning)
    when the database does not know the workflow or its definition is not loaded here."""
    target = await signal_target(conn, args.workflow_id)
    if target is None:
        warn(f"no workflow {args.workflow_id} in the database; sending the signal unchecked")
        return data
    if target.status in FINISHED:
        raise AdminError(
            f"workflow {args.workflow_id} is {target.status}; a finished workflow ignores signals"
        )
    registry = WorkflowRegistry.from_modules(settings.workflows)
    definition = registry.get(target.name, target.version)
    if definition is None:
        warn(
            f"workflow {args.workflow_id} runs {target.name!r} "
            f"{'version ' + target.version if target.version else ''}, which is not loaded "
            "here (RELAYFLOW_WORKFLOWS); sending the signal unchecked"
        )
        return data
    return checked_payload(definition, args.workflow_id, args.signal_name, data)


def _signal(args: argparse.Namespace, message_id: str, payload: dict[str, Any]) -> SignalWorkflow:
    try:
        return SignalWorkflow(
            message_id=message_id,
            workflow_id=args.workflow_id,
            idempotency_key=args.idempotency_key,
            signal_name=args.signal_name,
            payload=payload,
            sent_by=args.by,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{describe_path(tuple(error['loc']))}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise AdminError(f"cannot send this signal: {problems}") from exc


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def key_json(key: ApiKey) -> dict[str, str | bool | None]:
    """A key as `keys list --json` prints it: what it is, never its secret."""
    return {
        "id": key.id,
        "tenant": key.tenant,
        "role": key.role.value,
        "name": key.name,
        "created_at": _when(key.created_at),
        "last_used_at": _when(key.last_used_at),
        "revoked_at": _when(key.revoked_at),
        "revoked": key.revoked_at is not None,
    }


async def keys_command(args: argparse.Namespace, database_url: str) -> int:
    """`relayflow-admin keys …`: the database only, no broker."""
    hasher = None
    if args.command == "create":
        # Checked before anything is written: a key hashed under no secret could never verify.
        try:
            hasher = KeyHasher.from_secret(AuthSettings().secret)
        except AuthError as exc:
            raise AdminError(str(exc)) from None
    try:
        conn = await asyncpg.connect(database_url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise AdminError(f"cannot reach PostgreSQL ({exc})") from exc
    try:
        if hasher is not None:
            await _create_key(conn, hasher, args)
        elif args.command == "list":
            _write_keys(await list_keys(conn, args.tenant), as_json=args.json)
        else:
            key, now = await revoke_key(conn, args.key_id)
            sys.stdout.write(
                f"revoked API key {key.id} (tenant {key.tenant}, role {key.role})\n"
                if now
                else f"API key {key.id} was already revoked at {_when(key.revoked_at)}\n"
            )
    except AuthError as exc:
        raise AdminError(str(exc)) from None
    except asyncpg.UndefinedTableError:
        raise AdminError(
            "this database has no api_keys table: is DATABASE_URL the services' database? "
            "They create the table when they start (migration 0016)"
        ) from None
    finally:
        await conn.close()
    return 0


async def _create_key(
    conn: asyncpg.Connection[Any], hasher: KeyHasher, args: argparse.Namespace
) -> None:
    created = await create_key(
        conn, hasher, tenant=args.tenant, role=Role(args.role), name=args.name
    )
    # The key alone on stdout (`KEY=$(relayflow-admin keys create …)`), the rest on stderr.
    sys.stdout.write(created.key + "\n")
    key = created.record
    sys.stderr.write(
        f"relayflow-admin: created API key {key.id} (tenant {key.tenant}, role {key.role}); "
        "it is shown this once: store it now\n"
    )


def _write_keys(keys: Sequence[ApiKey], *, as_json: bool) -> None:
    out = sys.stdout
    if as_json:
        out.writelines(json.dumps(key_json(key)) + "\n" for key in keys)
        return
    out.write("id\ttenant\trole\tname\tcreated\tlast used\trevoked\n")
    for key in keys:
        columns = (key.name, _when(key.created_at), _when(key.last_used_at), _when(key.revoked_at))
        out.write("\t".join([key.id, key.tenant, key.role.value, *(c or "-" for c in columns)]))
        out.write("\n")
    out.write(f"{len(keys)} key(s)\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayflow-admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--amqp-url", help="default: AMQP_URL")
    parser.add_argument("--namespace", help="default: RELAYFLOW_NAMESPACE")
    parser.add_argument(
        "--database-url", help="default: DATABASE_URL (for `keys` and `workflows signal`)"
    )
    areas = parser.add_subparsers(dest="area", required=True)
    dead = areas.add_parser("dead-letters").add_subparsers(dest="command", required=True)
    listing = dead.add_parser("list", help="show dead letters without consuming them")
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    again = dead.add_parser("redrive", help="republish dead letters where they came from")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true")
    which.add_argument("--message-id", action="append", dest="message_ids")
    workflows = areas.add_parser("workflows").add_subparsers(dest="command", required=True)
    for name in ("cancel", "retry"):
        command = workflows.add_parser(name)
        command.add_argument("workflow_id")
        command.add_argument("--reason", default="")
    signal = workflows.add_parser("signal", help="send a named signal to a running workflow")
    signal.add_argument("workflow_id")
    signal.add_argument("signal_name")
    signal.add_argument("--data", required=True, help="the payload, a JSON object")
    signal.add_argument("--by", help="who sends it (recorded as sentBy)")
    signal.add_argument("--idempotency-key", help="the same key sends the same signal id")
    keys = areas.add_parser("keys", help="API keys").add_subparsers(dest="command", required=True)
    create = keys.add_parser("create", help="make a key and print it, once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--name", help="what the key is for, shown by `keys list`")
    listing = keys.add_parser("list", help="every key, never its secret")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = keys.add_parser("revoke", help="refuse the key from now on")
    revoke.add_argument("key_id", metavar="ID")
    broker = areas.add_parser("broker", help="broker users").add_subparsers(
        dest="command", required=True
    )
    setup = broker.add_parser(
        "setup",
        help="write least-privilege users for the namespace as RabbitMQ definitions, and print "
        "each service's AMQP_URL and the RELAYFLOW_BROKER_SENDERS they share",
    )
    setup.add_argument("--out", required=True, type=Path, help="the definitions file to write")
    setup.add_argument("--vhost", default="relayflow", help="default: relayflow")
    setup.add_argument("--host", default="127.0.0.1", help="broker host in the printed URLs")
    setup.add_argument("--port", type=int, default=5672)
    setup.add_argument(
        "--isolated-steps",
        action="store_true",
        help="the step service only sends results (RELAYFLOW_STEP_ADVANCE=false)",
    )
    return parser


def broker_setup(args: argparse.Namespace, namespace: str) -> int:
    """Write the definitions (passwords hashed, file readable by its owner only) and print what
    each service needs; the passwords are shown once, here."""
    settings = Settings()
    users = broker_users(namespace, isolated_steps=args.isolated_steps)
    # The topology of what the services load (RELAYFLOW_WORKFLOWS, RELAYFLOW_STEP_MODULES).
    steps = {
        *WorkflowRegistry.from_modules(settings.workflows).task_names(),
        *StepRegistry.from_modules(settings.step_modules).names(),
    }
    topology = Topology(namespace, settings.queue_type, settings.delivery_limit)
    document = definitions(users, args.vhost, topology, steps)
    descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(document, out, indent=2)
    vhost = urllib.parse.quote(args.vhost, safe="")
    lines = [f"wrote {args.out}; load it with: rabbitmqctl import_definitions {args.out}", ""]
    for user in users:
        url = f"amqp://{user.name}:{user.password}@{args.host}:{args.port}/{vhost}"
        lines.append(f"{user.service:13} AMQP_URL={url}")
    lines += ["", f"every service: RELAYFLOW_BROKER_SENDERS='{senders_setting(users)}'"]
    if args.isolated_steps:
        lines.append("the step service: RELAYFLOW_STEP_ADVANCE=false")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _warn(text: str) -> None:
    sys.stderr.write(f"relayflow-admin: warning: {text}\n")


async def _amain(args: argparse.Namespace) -> int:
    settings = Settings()
    url = args.amqp_url or settings.amqp_url
    topology = Topology(args.namespace or settings.namespace)
    signal: SignalWorkflow | None = None
    if args.area == "workflows" and args.command == "signal":
        # Checked before the broker is reached: a refused payload sends nothing.
        signal = await prepare_signal(args, settings, _warn)
    try:
        connection = await aio_pika.connect(url, timeout=10)
    except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
        raise AdminError(f"cannot reach RabbitMQ: {exc}") from exc
    out = sys.stdout
    try:
        if args.area == "dead-letters" and args.command == "list":
            letters = await list_dead_letters(connection, topology, args.limit)
            for letter in letters:
                if args.json:
                    out.write(json.dumps(asdict(letter)) + "\n")
                else:
                    out.write(
                        f"{letter.message_id}\t{letter.type or '-'}\t{letter.queue}\t"
                        f"{letter.age_seconds if letter.age_seconds is not None else '?'}s\t"
                        f"{letter.reason}\n"
                    )
            if not args.json:
                out.write(f"{len(letters)} dead letter(s) in {topology.dead_letter_queue}\n")
        elif args.area == "dead-letters":
            sent = await redrive(
                connection, topology, message_ids=None if args.all else args.message_ids
            )
            for letter in sent:
                out.write(
                    f"re-drove {letter.message_id} to {letter.exchange}/{letter.routing_key}\n"
                )
            out.write(f"{len(sent)} dead letter(s) re-driven\n")
        elif signal is not None:
            await send_signal(connection, topology, signal)
            out.write(
                f"SignalWorkflow {signal.signal_name} for {signal.workflow_id} published "
                f"({signal.message_id})\n"
            )
        else:
            model = CancelWorkflow if args.command == "cancel" else RetryWorkflow
            message = model(
                message_id=new_message_id(), workflow_id=args.workflow_id, reason=args.reason
            )
            await control(connection, topology, message)
            out.write(f"{message.type} for {args.workflow_id} published ({message.message_id})\n")
    finally:
        await connection.close()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        if args.area == "keys":
            database_url = args.database_url or Settings().database_url
            code = asyncio.run(keys_command(args, database_url))
        elif args.area == "broker":
            code = broker_setup(args, args.namespace or Settings().namespace)
        else:
            code = asyncio.run(_amain(args))
    except (AdminError, aio_pika.exceptions.DeliveryError, aio_pika.exceptions.PublishError) as exc:
        sys.stderr.write(f"relayflow-admin: {exc}\n")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
