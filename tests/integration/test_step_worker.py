"""The step worker against the real broker and database: exactly-once outcomes under duplicates,
redeliveries, expired leases and poison messages, and the seed workflow's step bodies."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import REGISTRY
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from apps.form_submission import steps as form_submission
from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.amqp.settle import REASON_HEADER
from relayflow.contracts import (
    ExternalRequest,
    StepCommand,
    StepResult,
    StepResultStatus,
    decode,
    encode,
    new_workflow_id,
)
from relayflow.db import create_pool
from relayflow.errors import StepError
from relayflow.settings import Settings
from relayflow.steps import StepContext, StepRegistry, StepWorker, WorkerConfig
from relayflow.topology import SIGNAL_KEY, Topology, step_key
from relayflow.workflow import WorkflowRegistry
from services.steps.service import serve
from services.steps.settings import StepServiceSettings
from tests.support import delete_topology, get_messages, wait_for

# Steps that exist only in these tests; their queues are declared and removed here.
TEST_STEPS = ["echo", "flaky", "refuse", "slow", "txn", "unstorable"]

FORM = {"name": "Ada Lovelace", "email": "Ada@Example.com", "message": "Hello there"}


class Item(BaseModel):
    value: int


class EchoOutput(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    doubled_value: int


@pytest.fixture
async def declared(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    registry: WorkflowRegistry,
) -> AsyncIterator[Topology]:
    """The test's topology, with queues for the test-only steps too."""
    channel = await amqp_connection.channel()
    await topology.declare(channel, [*registry.task_names(), *TEST_STEPS])
    await channel.close()
    yield topology
    await delete_topology(amqp_connection, topology, TEST_STEPS)


@pytest.fixture
async def channel(amqp_connection: AbstractRobustConnection) -> AsyncIterator[AbstractChannel]:
    channel = await amqp_connection.channel()
    yield channel
    await channel.close()


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()


@contextlib.asynccontextmanager
async def running(
    steps: StepRegistry,
    pool: asyncpg.Pool[Any],
    connection: AbstractRobustConnection,
    topology: Topology,
    config: WorkerConfig | None = None,
) -> AsyncIterator[StepWorker]:
    worker = StepWorker(
        steps=steps, pool=pool, connection=connection, topology=topology, config=config
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(grace=5.0)


def command(
    workflow_id: str,
    step: str,
    *,
    attempt: int = 1,
    input: dict[str, Any] | None = None,
    dependencies: dict[str, Any] | None = None,
) -> StepCommand:
    return StepCommand(
        message_id=f"cmd:{workflow_id}:{step}:0:{attempt}",
        workflow_id=workflow_id,
        workflow_name="test",
        step_name=step,
        attempt=attempt,
        input={"value": 21} if input is None else input,
        dependencies=dependencies or {},
    )


async def send(publisher: Publisher, topology: Topology, cmd: StepCommand) -> None:
    await publisher.publish(
        OutgoingMessage.of(cmd, exchange=topology.exchange, routing_key=step_key(cmd.step_name))
    )


async def send_raw(publisher: Publisher, topology: Topology, step: str, body: bytes) -> None:
    await publisher.publish(
        OutgoingMessage(
            exchange=topology.exchange,
            routing_key=step_key(step),
            body=body,
            message_id=f"raw-{len(body)}",
            type="StepCommand",
        )
    )


async def take_results(
    channel: AbstractChannel, topology: Topology, count: int
) -> list[tuple[AbstractIncomingMessage, StepResult]]:
    taken = []
    async for message in get_messages(
        channel, topology.orchestrator_queue, count=count, timeout=20
    ):
        result = decode(message.body)
        assert isinstance(result, StepResult)
        taken.append((message, result))
    return taken


async def invocation(pool: asyncpg.Pool[Any], workflow_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM step_invocations WHERE workflow_id = $1", workflow_id)


def echo_steps(calls: Counter[str]) -> StepRegistry:
    steps = StepRegistry()

    @steps.step("echo")
    async def echo(ctx: StepContext[Item]) -> EchoOutput:
        calls[ctx.workflow_id] += 1
        return EchoOutput(doubled_value=ctx.input.value * 2)

    return steps


async def test_success_publishes_result_and_records_it(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """The basic contract: a command yields one succeeded result, by alias, and a settled row."""
    calls: Counter[str] = Counter()
    wf = new_workflow_id()
    async with running(echo_steps(calls), pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "echo"))
        [(message, result)] = await take_results(channel, declared, 1)
    assert message.message_id == result.message_id == f"res:{wf}:echo:0:1"
    assert result.status is StepResultStatus.SUCCEEDED
    assert (result.workflow_id, result.step_name, result.step_key, result.attempt) == (
        wf,
        "echo",
        "0",
        1,
    )
    assert result.output == {"doubledValue": 42}
    assert result.started_at is not None
    assert result.finished_at is not None
    row = await invocation(pool, wf)
    assert row is not None
    assert (row["status"], row["executions"], row["output"], row["lease_owner"]) == (
        "succeeded",
        1,
        {"doubledValue": 42},
        None,
    )


async def test_redelivered_command_runs_once_and_answers_identically(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A duplicate command must not re-run the body, and its result must dedupe downstream."""
    calls: Counter[str] = Counter()
    wf = new_workflow_id()
    async with running(echo_steps(calls), pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "echo"))
        [(first, _)] = await take_results(channel, declared, 1)
        await send(publisher, declared, command(wf, "echo"))
        [(second, _)] = await take_results(channel, declared, 1)
    assert calls[wf] == 1
    assert first.message_id == second.message_id
    assert first.body == second.body


async def test_succeeded_invocation_answers_a_retry_without_running(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """An orchestrator retry of a step that already succeeded gets the stored output, on its own
    attempt so that the orchestrator accepts it."""
    calls: Counter[str] = Counter()
    wf = new_workflow_id()
    await pool.execute(
        "INSERT INTO step_invocations (workflow_id, step_name, step_key, status, attempt,"
        " output, started_at, finished_at)"
        " VALUES ($1, 'echo', '0', 'succeeded', 1, $2, now(), now())",
        wf,
        {"doubledValue": 7},
    )
    async with running(echo_steps(calls), pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "echo", attempt=2))
        [(message, result)] = await take_results(channel, declared, 1)
    assert calls[wf] == 0
    assert message.message_id == f"res:{wf}:echo:0:2"
    assert (result.status, result.attempt, result.output) == (
        StepResultStatus.SUCCEEDED,
        2,
        {"doubledValue": 7},
    )


async def test_a_command_answered_from_its_record_counts_as_a_cache_hit(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """relayflow_step_cache_hits_total is how an operator sees redeliveries and retries of
    steps that had already succeeded: answered from the record, the body not run again."""
    calls: Counter[str] = Counter()
    wf = new_workflow_id()
    hits = "relayflow_step_cache_hits_total"
    async with running(echo_steps(calls), pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "echo"))
        await take_results(channel, declared, 1)
        before = REGISTRY.get_sample_value(hits, {"step": "echo"}) or 0.0
        await send(publisher, declared, command(wf, "echo"))
        await take_results(channel, declared, 1)
    assert calls[wf] == 1
    assert REGISTRY.get_sample_value(hits, {"step": "echo"}) == before + 1


async def test_failed_invocation_reruns_only_on_a_newer_attempt(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A redelivered failed attempt repeats its failure; the orchestrator's next attempt runs."""
    calls: Counter[str] = Counter()
    steps = StepRegistry()

    @steps.step("flaky")
    async def flaky(ctx: StepContext[Item]) -> dict[str, int]:
        calls[ctx.workflow_id] += 1
        if calls[ctx.workflow_id] == 1:
            raise RuntimeError("connection reset by peer")
        return {"value": ctx.input.value}

    wf = new_workflow_id()
    async with running(steps, pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "flaky"))
        [(first, failed)] = await take_results(channel, declared, 1)
        await send(publisher, declared, command(wf, "flaky"))
        [(again, _)] = await take_results(channel, declared, 1)
        await send(publisher, declared, command(wf, "flaky", attempt=2))
        [(_, succeeded)] = await take_results(channel, declared, 1)
    assert failed.status is StepResultStatus.FAILED
    assert failed.error is not None
    assert (failed.error.type, failed.error.message, failed.error.retryable) == (
        "RuntimeError",
        "connection reset by peer",
        True,
    )
    assert again.body == first.body
    assert (succeeded.status, succeeded.attempt, succeeded.output) == (
        StepResultStatus.SUCCEEDED,
        2,
        {"value": 21},
    )
    assert calls[wf] == 2
    row = await invocation(pool, wf)
    assert row is not None
    assert (row["status"], row["attempt"], row["executions"], row["error"]) == (
        "succeeded",
        2,
        2,
        None,
    )


async def test_non_retryable_errors_say_so(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A StepError(non_retryable=True) and an input that does not fit the model must not be
    retried by the orchestrator: the result carries retryable=false."""
    steps = StepRegistry()

    @steps.step("refuse")
    async def refuse(ctx: StepContext[Item]) -> None:
        raise StepError("we do not take odd numbers", type="OddNumber", non_retryable=True)

    refused, invalid = new_workflow_id(), new_workflow_id()
    async with running(steps, pool, amqp_connection, declared):
        await send(publisher, declared, command(refused, "refuse"))
        await send(publisher, declared, command(invalid, "refuse", input={"value": "many"}))
        results = {
            result.workflow_id: result for _, result in await take_results(channel, declared, 2)
        }
    refusal, invalidity = results[refused].error, results[invalid].error
    assert refusal is not None
    assert refusal.model_dump() == {
        "type": "OddNumber",
        "message": "we do not take odd numbers",
        "retryable": False,
    }
    assert invalidity is not None
    assert (invalidity.type, invalidity.retryable) == ("InvalidInput", False)


async def test_an_output_postgresql_cannot_store_fails_the_step_for_good(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A body that returns a NUL character fails its invocation non-retryably, naming where,
    and that failure is recorded: otherwise recording it fails the batch on every redelivery
    until the queue's delivery limit dead-letters the command."""
    calls: Counter[str] = Counter()
    steps = StepRegistry()

    @steps.step("unstorable")
    async def unstorable(ctx: StepContext[Item]) -> dict[str, Any]:
        calls[ctx.workflow_id] += 1
        return {"lines": ["fine", {"note": "a\x00b"}]}

    wf = new_workflow_id()
    async with running(steps, pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "unstorable"))
        [(first, failed)] = await take_results(channel, declared, 1)
        await send(publisher, declared, command(wf, "unstorable"))
        [(again, _)] = await take_results(channel, declared, 1)
    assert failed.status is StepResultStatus.FAILED
    assert failed.error is not None
    assert (failed.error.type, failed.error.retryable) == ("OutputNotStorable", False)
    assert "at lines.1.note" in failed.error.message
    assert again.body == first.body
    assert calls[wf] == 1
    row = await invocation(pool, wf)
    assert row is not None
    assert (row["status"], row["output"], row["error"]["type"]) == (
        "failed",
        None,
        "OutputNotStorable",
    )


async def test_transactional_step_writes_commit_with_success_only(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A database side effect happens exactly once: rolled back when the body fails, committed
    once when it succeeds, not repeated by a redelivery."""
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS test_step_effects"
        " (id bigserial PRIMARY KEY, workflow_id text NOT NULL)"
    )
    steps = StepRegistry()

    @steps.step("txn", transactional=True)
    async def txn(ctx: StepContext[Item]) -> dict[str, str]:
        await ctx.connection.execute(
            "INSERT INTO test_step_effects (workflow_id) VALUES ($1)", ctx.workflow_id
        )
        if ctx.attempt == 1:
            raise StepError("the ledger is closed")
        return {"written": ctx.workflow_id}

    async def effects() -> int:
        count: int = await pool.fetchval(
            "SELECT count(*) FROM test_step_effects WHERE workflow_id = $1", wf
        )
        return count

    wf = new_workflow_id()
    async with running(steps, pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "txn"))
        [(_, failed)] = await take_results(channel, declared, 1)
        assert failed.status is StepResultStatus.FAILED
        assert await effects() == 0
        await send(publisher, declared, command(wf, "txn", attempt=2))
        await send(publisher, declared, command(wf, "txn", attempt=2))
        results = await take_results(channel, declared, 2)
    assert [result.status for _, result in results] == [StepResultStatus.SUCCEEDED] * 2
    assert await effects() == 1


async def test_duplicate_in_flight_runs_once(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """Two deliveries of one command at the same time: the second waits for the first instead of
    running the body again, then answers with the same result."""
    calls: Counter[str] = Counter()
    gate = asyncio.Event()
    steps = StepRegistry()

    @steps.step("slow")
    async def slow(ctx: StepContext[Item]) -> dict[str, int]:
        calls[ctx.workflow_id] += 1
        await gate.wait()
        return {"value": ctx.input.value}

    wf = new_workflow_id()
    async with running(steps, pool, amqp_connection, declared) as worker:
        await send(publisher, declared, command(wf, "slow"))
        await send(publisher, declared, command(wf, "slow"))

        async def both_held() -> bool:
            return calls[wf] == 1 and worker.inflight == 2

        await wait_for(both_held)
        gate.set()
        results = await take_results(channel, declared, 2)
    assert calls[wf] == 1
    assert results[0][0].message_id == results[1][0].message_id == f"res:{wf}:slow:0:1"
    assert results[0][1].output == results[1][1].output == {"value": 21}


async def test_commands_that_queued_up_run_in_shared_transactions_each_once(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """Under load the worker claims, runs and records what has queued up in one transaction
    per batch (the point: fewer commits), and a batch changes nothing of the guarantees: every
    command answered, each body run once, copies in one batch answered from the first, and
    transactional bodies queued alongside (each in a transaction of its own) written once."""
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS test_step_effects"
        " (id bigserial PRIMARY KEY, workflow_id text NOT NULL)"
    )
    calls: Counter[str] = Counter()
    steps = echo_steps(calls)

    @steps.step("txn", transactional=True)
    async def txn(ctx: StepContext[Item]) -> dict[str, str]:
        calls[ctx.workflow_id] += 1
        await ctx.connection.execute(
            "INSERT INTO test_step_effects (workflow_id) VALUES ($1)", ctx.workflow_id
        )
        return {"written": ctx.workflow_id}

    echoes = [new_workflow_id() for _ in range(30)]
    writes = [new_workflow_id() for _ in range(5)]
    # Queued before the worker starts, so that they arrive together.
    for wf in echoes:
        await send(publisher, declared, command(wf, "echo"))
    await send(publisher, declared, command(echoes[0], "echo"))
    for wf in writes:
        await send(publisher, declared, command(wf, "txn"))
    await send(publisher, declared, command(writes[0], "txn"))
    async with running(steps, pool, amqp_connection, declared):
        results = await take_results(channel, declared, len(echoes) + len(writes) + 2)
    by_workflow: dict[str, list[StepResult]] = {}
    for _, result in results:
        assert result.status is StepResultStatus.SUCCEEDED
        by_workflow.setdefault(result.workflow_id, []).append(result)
    assert set(by_workflow) == {*echoes, *writes}
    assert len(by_workflow[echoes[0]]) == len(by_workflow[writes[0]]) == 2
    assert all(calls[wf] == 1 for wf in [*echoes, *writes])
    effects = await pool.fetchval(
        "SELECT count(*) FROM test_step_effects WHERE workflow_id = ANY($1)", writes
    )
    assert effects == len(writes)
    # Rows written by one transaction share its xmin: how many transactions recorded them.
    transactions = await pool.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM step_invocations WHERE workflow_id = ANY($1)",
        echoes,
    )
    assert transactions <= len(echoes) // 3


async def test_lease_is_renewed_while_the_body_runs(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A step that runs longer than its lease keeps it by renewal, so a waiting duplicate does
    not take it over and run the body a second time."""
    calls: Counter[str] = Counter()
    gate = asyncio.Event()
    steps = StepRegistry()

    @steps.step("slow")
    async def slow(ctx: StepContext[Item]) -> dict[str, int]:
        calls[ctx.workflow_id] += 1
        await gate.wait()
        return {"value": ctx.input.value}

    wf = new_workflow_id()
    # No inline budget: the claim commits at once, so the lease is what protects the body.
    config = WorkerConfig(lease_seconds=0.6, inline_budget=0)
    async with running(steps, pool, amqp_connection, declared, config) as worker:
        await send(publisher, declared, command(wf, "slow"))

        async def started() -> bool:
            return calls[wf] == 1

        await wait_for(started)
        row = await invocation(pool, wf)
        assert row is not None
        first_expiry = row["lease_expires_at"]
        await send(publisher, declared, command(wf, "slow"))

        async def renewed_past_several_leases() -> bool:
            current = await invocation(pool, wf)
            assert current is not None
            return bool(
                worker.inflight == 2
                and (current["lease_expires_at"] - first_expiry).total_seconds() > 1.5
            )

        await wait_for(renewed_past_several_leases)
        gate.set()
        await take_results(channel, declared, 2)
    assert calls[wf] == 1


async def test_expired_lease_is_taken_over(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A worker that died mid-step leaves a running row; once its lease expires, the redelivered
    command runs the step, and not before."""
    calls: Counter[str] = Counter()
    wf = new_workflow_id()
    expiry = await pool.fetchval(
        "INSERT INTO step_invocations (workflow_id, step_name, step_key, status, attempt,"
        " lease_owner, lease_expires_at, started_at)"
        " VALUES ($1, 'echo', '0', 'running', 1, 'dead-worker', now() + interval '1 second',"
        " now()) RETURNING lease_expires_at",
        wf,
    )
    async with running(echo_steps(calls), pool, amqp_connection, declared) as worker:
        await send(publisher, declared, command(wf, "echo"))
        [(_, result)] = await take_results(channel, declared, 1)
    assert result.status is StepResultStatus.SUCCEEDED
    assert calls[wf] == 1
    row = await invocation(pool, wf)
    assert row is not None
    assert row["executions"] == 2
    assert row["started_at"] >= expiry
    assert worker.worker_id != "dead-worker"


async def test_poison_messages_are_dead_lettered_and_consumption_goes_on(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A message that can never be a command for this worker goes to the dead-letter queue with
    its reason on first delivery, without blocking the commands behind it."""
    calls: Counter[str] = Counter()
    wf = new_workflow_id()
    wrong_type = ExternalRequest(
        message_id="ext:x", workflow_id=wf, correlation_id="c", reply_to=SIGNAL_KEY, payload={}
    )
    async with running(echo_steps(calls), pool, amqp_connection, declared):
        await send_raw(publisher, declared, "echo", b"{not json")
        await send_raw(publisher, declared, "echo", b'{"type": "StepCommand", "attempt": 0}')
        await send_raw(publisher, declared, "echo", encode(wrong_type))
        await send_raw(publisher, declared, "echo", encode(command(wf, "unserved")))
        await send(publisher, declared, command(wf, "echo"))
        [(_, result)] = await take_results(channel, declared, 1)
        dead = [
            message async for message in get_messages(channel, declared.dead_letter_queue, count=4)
        ]
    assert result.status is StepResultStatus.SUCCEEDED
    reasons = sorted(str((message.headers or {})[REASON_HEADER]) for message in dead)
    assert reasons[0].startswith("expected a StepCommand, got a ExternalRequest")
    assert reasons[1].startswith("not a valid message")
    assert reasons[2].startswith("not a valid message")
    assert "does not serve step body 'unserved'" in reasons[3]
    queue = await channel.declare_queue(declared.step_queue("echo"), passive=True)
    assert queue.declaration_result.message_count == 0


async def test_stop_hands_unfinished_work_back_at_once(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """A worker stopped mid-step requeues the command and releases its lease, so another worker
    runs it now rather than after the lease would have expired."""
    stuck = asyncio.Event()
    steps = StepRegistry()

    @steps.step("slow")
    async def slow(ctx: StepContext[Item]) -> dict[str, int]:
        stuck.set()
        await asyncio.Event().wait()
        return {}

    fast = StepRegistry()

    @fast.step("slow")
    async def quick(ctx: StepContext[Item]) -> dict[str, int]:
        return {"value": ctx.input.value}

    wf = new_workflow_id()
    first = StepWorker(
        steps=steps,
        pool=pool,
        connection=amqp_connection,
        topology=declared,
        config=WorkerConfig(inline_budget=0),  # claim committed: a lease to release
    )
    await first.start()
    await send(publisher, declared, command(wf, "slow"))
    await asyncio.wait_for(stuck.wait(), timeout=20)
    await first.stop(grace=0.1)
    async with running(fast, pool, amqp_connection, declared):
        [(_, result)] = await take_results(channel, declared, 1)
    assert result.output == {"value": 21}
    row = await invocation(pool, wf)
    assert row is not None
    assert (row["status"], row["executions"]) == ("succeeded", 2)


async def test_stop_within_the_inline_window_leaves_no_claim_behind(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """While a quick body runs, its claim is an uncommitted row: a worker stopped (or killed)
    then leaves nothing to wait out, and the redelivery claims the invocation afresh."""
    stuck = asyncio.Event()
    steps = StepRegistry()

    @steps.step("slow")
    async def slow(ctx: StepContext[Item]) -> dict[str, int]:
        stuck.set()
        await asyncio.Event().wait()
        return {}

    fast = StepRegistry()

    @fast.step("slow")
    async def quick(ctx: StepContext[Item]) -> dict[str, int]:
        return {"value": ctx.input.value}

    wf = new_workflow_id()
    first = StepWorker(
        steps=steps,
        pool=pool,
        connection=amqp_connection,
        topology=declared,
        config=WorkerConfig(inline_budget=60),
    )
    await first.start()
    await send(publisher, declared, command(wf, "slow"))
    await asyncio.wait_for(stuck.wait(), timeout=20)
    assert await invocation(pool, wf) is None  # the claim is not visible until it commits
    await first.stop(grace=0.1)
    async with running(fast, pool, amqp_connection, declared):
        [(_, result)] = await take_results(channel, declared, 1)
    assert result.output == {"value": 21}
    row = await invocation(pool, wf)
    assert row is not None
    assert (row["status"], row["executions"]) == ("succeeded", 1)


async def test_database_outage_hands_commands_back_without_dead_lettering(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    database_url: str,
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Commands that meet an unreachable database go back to the queue, not to the dead letters,
    and run once the database is back."""
    calls: Counter[str] = Counter()
    broken = await create_pool(database_url, min_size=1, max_size=1)
    await broken.close()
    wf = new_workflow_id()
    config = WorkerConfig(retry_backoff=0.05)
    async with running(echo_steps(calls), broken, amqp_connection, declared, config):
        await send(publisher, declared, command(wf, "echo"))

        async def handed_back_twice() -> bool:
            return sum("handing it back" in r.getMessage() for r in caplog.records) >= 2

        await wait_for(handed_back_twice)
    async with running(echo_steps(calls), pool, amqp_connection, declared, config):
        [(_, result)] = await take_results(channel, declared, 1)
    assert result.status is StepResultStatus.SUCCEEDED
    assert calls[wf] == 1
    dead = await channel.declare_queue(declared.dead_letter_queue, passive=True)
    assert dead.declaration_result.message_count == 0


# -- the seed workflow's step bodies -------------------------------------------------------


@pytest.fixture
def seed_steps() -> StepRegistry:
    return form_submission.steps


async def test_validate_refuses_disposable_addresses_for_good(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
    seed_steps: StepRegistry,
) -> None:
    """Business validation beyond the schema fails the workflow without retries, and a good form
    passes with its email normalised."""
    good, disposable = new_workflow_id(), new_workflow_id()
    async with running(seed_steps, pool, amqp_connection, declared):
        await send(publisher, declared, command(good, "validate", input=FORM))
        await send(
            publisher,
            declared,
            command(disposable, "validate", input={**FORM, "email": "x@mailinator.com"}),
        )
        results = {r.workflow_id: r for _, r in await take_results(channel, declared, 2)}
    assert results[good].output == {"valid": True, "email": "ada@example.com"}
    refusal = results[disposable].error
    assert refusal is not None
    assert (refusal.type, refusal.retryable) == ("DisposableEmail", False)


async def test_persist_writes_one_row_even_when_run_twice(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
    seed_steps: StepRegistry,
) -> None:
    """persist is exactly-once: a duplicate delivery does not re-run it, and a re-run (after a
    recorded failure) still leaves a single form_submissions row."""
    wf = new_workflow_id()
    deps = {"validate": {"valid": True, "email": "ada@example.com"}}
    async with running(seed_steps, pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "persist", input=FORM, dependencies=deps))
        await send(publisher, declared, command(wf, "persist", input=FORM, dependencies=deps))
        results = await take_results(channel, declared, 2)
        # Pretend attempt 1 failed after all, so the orchestrator's attempt 2 runs the body again.
        await pool.execute(
            'UPDATE step_invocations SET status = \'failed\', error = \'{"type": "X",'
            ' "message": "x"}\'::jsonb WHERE workflow_id = $1',
            wf,
        )
        await send(
            publisher, declared, command(wf, "persist", attempt=2, input=FORM, dependencies=deps)
        )
        [(_, rerun)] = await take_results(channel, declared, 1)
    assert [r.output for _, r in results] == [{"recordId": wf}] * 2
    assert rerun.output == {"recordId": wf}
    rows = await pool.fetch("SELECT * FROM form_submissions WHERE workflow_id = $1", wf)
    assert len(rows) == 1
    assert (rows[0]["name"], rows[0]["email"], rows[0]["status"]) == (
        "Ada Lovelace",
        "ada@example.com",
        "received",
    )
    row = await invocation(pool, wf)
    assert row is not None
    assert row["executions"] == 2


async def test_publish_to_mq_sends_the_external_request(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
    seed_steps: StepRegistry,
) -> None:
    """publishToMQ's side effect is a message the external system answers to the orchestrator's
    signal key, with the correlation id the awaitResponse wait looks for."""
    wf = new_workflow_id()
    deps = {"persist": {"recordId": wf}}
    async with running(seed_steps, pool, amqp_connection, declared):
        await send(publisher, declared, command(wf, "publishToMQ", input=FORM, dependencies=deps))
        [(_, result)] = await take_results(channel, declared, 1)
        [message] = [m async for m in get_messages(channel, declared.external_queue, count=1)]
    request = decode(message.body)
    assert isinstance(request, ExternalRequest)
    assert result.output == {"correlationId": f"{wf}:awaitResponse"}
    assert message.message_id == f"ext:{wf}"
    assert (request.correlation_id, request.reply_to, request.workflow_id) == (
        f"{wf}:awaitResponse",
        SIGNAL_KEY,
        wf,
    )
    assert request.payload["recordId"] == wf
    assert request.payload["email"] == "Ada@Example.com".lower()


async def test_finalize_applies_the_reply_once(
    declared: Topology,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    channel: AbstractChannel,
    publisher: Publisher,
    seed_steps: StepRegistry,
) -> None:
    """finalize's update commits with its success record: delivered twice, it counts once."""
    wf = new_workflow_id()
    await pool.execute(
        "INSERT INTO form_submissions (workflow_id, name, email, message)"
        " VALUES ($1, 'Ada', 'ada@example.com', 'Hi')",
        wf,
    )
    reply = {"ticketId": "T-1", "status": "accepted"}
    deps = {"persist": {"recordId": wf}, "awaitResponse": reply}
    cmd = command(wf, "finalize", input=FORM, dependencies=deps)
    async with running(seed_steps, pool, amqp_connection, declared):
        await send(publisher, declared, cmd)
        await send(publisher, declared, cmd)
        results = await take_results(channel, declared, 2)
    assert [r.output for _, r in results] == [
        {"recordId": wf, "ticketId": "T-1", "status": "finalized"}
    ] * 2
    row = await pool.fetchrow("SELECT * FROM form_submissions WHERE workflow_id = $1", wf)
    assert row is not None
    assert (row["status"], row["finalize_count"], row["external_reply"]) == (
        "finalized",
        1,
        reply,
    )


async def test_service_serves_until_stopped(
    settings: Settings,
    declared: Topology,
    pool: asyncpg.Pool[Any],
    channel: AbstractChannel,
    publisher: Publisher,
) -> None:
    """The service's lifespan: it declares, serves only the chosen steps, and returns on stop."""
    service_settings = StepServiceSettings(
        AMQP_URL=settings.amqp_url,
        DATABASE_URL=settings.database_url,
        namespace=settings.namespace,
        steps=["validate"],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(service_settings, stop))
    wf = new_workflow_id()
    try:
        await send(publisher, declared, command(wf, "validate", input=FORM))
        [(_, result)] = await take_results(channel, declared, 1)
        assert result.status is StepResultStatus.SUCCEEDED
        await send(publisher, declared, command(wf, "persist", input=FORM))
        queue = await channel.declare_queue(declared.step_queue("persist"), passive=True)
        assert queue.declaration_result.message_count == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
