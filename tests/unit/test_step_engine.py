"""The invocation engine without a broker or a database, over records kept in memory: which
invocations run, which are answered from their record, and what the answers say.

Transactions, leases under real concurrency, delivery and redelivery are not shown here (the
in-memory records cannot show them); tests/integration/test_step_worker.py is where they are.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from relayflow.contracts import (
    Envelope,
    ErrorInfo,
    ExternalRequest,
    StepCommand,
    StepResult,
    StepResultStatus,
)
from relayflow.errors import StepError
from relayflow.steps import (
    EngineConfig,
    Invocation,
    InvocationEngine,
    InvocationStatus,
    StepContext,
    StepRegistry,
    invocation_key,
)
from relayflow.steps.testing import InMemoryInvocations, InMemoryStore, NotInMemory


class Item(BaseModel):
    value: int


class EchoOutput(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    doubled_value: int


class Published:
    """What step bodies sent through `ctx.publish` (the broker is the adapter's, not here)."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, str, str | None]] = []

    async def __call__(
        self, message: Envelope, routing_key: str, correlation_id: str | None
    ) -> None:
        self.messages.append((message, routing_key, correlation_id))


def command(
    workflow_id: str = "wf",
    step: str = "echo",
    *,
    attempt: int = 1,
    key: str = "0",
    input: dict[str, Any] | None = None,
) -> StepCommand:
    return StepCommand(
        message_id=f"cmd:{workflow_id}:{step}:{key}:{attempt}",
        workflow_id=workflow_id,
        workflow_name="test",
        step_name=step,
        step_key=key,
        attempt=attempt,
        input={"value": 21} if input is None else input,
    )


def engine_over(
    steps: StepRegistry,
    records: InMemoryInvocations,
    *,
    store: InMemoryStore | None = None,
    config: EngineConfig | None = None,
    publish: Published | None = None,
) -> InvocationEngine:
    return InvocationEngine(
        steps, store or records.store(), publish=publish or Published(), config=config
    )


def echo_steps(calls: Counter[str]) -> StepRegistry:
    steps = StepRegistry()

    @steps.step("echo")
    async def echo(ctx: StepContext[Item]) -> EchoOutput:
        calls[ctx.workflow_id] += 1
        return EchoOutput(doubled_value=ctx.input.value * 2)

    return steps


def record(records: InMemoryInvocations, cmd: StepCommand) -> Invocation:
    found = records.get(invocation_key(cmd))
    assert found is not None
    return found


async def answer(engine: InvocationEngine, cmd: StepCommand) -> StepResult:
    result = await engine.run(cmd)
    assert result is not None
    return result


async def test_success_is_recorded_and_answered_by_alias() -> None:
    """The basic contract: one succeeded result for the command's attempt, output by alias,
    and a settled record with no lease left."""
    calls: Counter[str] = Counter()
    records = InMemoryInvocations()
    result = await answer(engine_over(echo_steps(calls), records), command())
    assert (result.message_id, result.status, result.attempt, result.output) == (
        "res:wf:echo:0:1",
        StepResultStatus.SUCCEEDED,
        1,
        {"doubledValue": 42},
    )
    row = record(records, command())
    assert (row.status, row.executions, row.lease_owner, row.output) == (
        InvocationStatus.SUCCEEDED,
        1,
        None,
        {"doubledValue": 42},
    )


async def test_succeeded_invocation_is_answered_from_its_record_without_running() -> None:
    """A redelivery, or an orchestrator retry of a step that already succeeded, gets the stored
    output — on the asking attempt, so the orchestrator accepts it — and the body never runs
    again."""
    calls: Counter[str] = Counter()
    records = InMemoryInvocations()
    engine = engine_over(echo_steps(calls), records)
    first = await answer(engine, command())
    again = await answer(engine, command())
    retried = await answer(engine, command(attempt=2))
    assert calls["wf"] == 1
    assert again == first
    assert (retried.message_id, retried.attempt, retried.output) == (
        "res:wf:echo:0:2",
        2,
        {"doubledValue": 42},
    )
    records.put(("earlier", "echo", "0"), status=InvocationStatus.SUCCEEDED, output={"x": 7})
    stored = await answer(engine, command("earlier", attempt=3))
    assert (stored.attempt, stored.output, calls["earlier"]) == (3, {"x": 7}, 0)


async def test_failed_invocation_reruns_only_on_a_higher_attempt() -> None:
    """A redelivered failed attempt repeats its recorded failure without running; the next
    attempt runs the body again."""
    calls: Counter[str] = Counter()
    steps = StepRegistry()

    @steps.step("flaky")
    async def flaky(ctx: StepContext[Item]) -> dict[str, int]:
        calls[ctx.workflow_id] += 1
        if ctx.attempt == 1:
            raise RuntimeError("connection reset by peer")
        return {"value": ctx.input.value}

    records = InMemoryInvocations()
    engine = engine_over(steps, records)
    failed = await answer(engine, command(step="flaky"))
    repeated = await answer(engine, command(step="flaky"))
    assert calls["wf"] == 1
    assert repeated == failed
    assert failed.error == ErrorInfo(
        type="RuntimeError", message="connection reset by peer", retryable=True
    )
    succeeded = await answer(engine, command(step="flaky", attempt=2))
    assert (succeeded.status, succeeded.attempt, succeeded.output) == (
        StepResultStatus.SUCCEEDED,
        2,
        {"value": 21},
    )
    # An older attempt arriving late is answered with the newer record, not run.
    late = await answer(engine, command(step="flaky"))
    assert (late.status, late.attempt, calls["wf"]) == (StepResultStatus.SUCCEEDED, 1, 2)
    assert record(records, command(step="flaky")).executions == 2


async def test_non_retryable_errors_say_so() -> None:
    """A refusal, an input that does not fit the model and an output that is not JSON must not
    be retried by the orchestrator: the result carries retryable=false."""
    steps = StepRegistry()

    @steps.step("refuse")
    async def refuse(ctx: StepContext[Item]) -> None:
        raise StepError("we do not take odd numbers", type="OddNumber", non_retryable=True)

    @steps.step("opaque")
    async def opaque(ctx: StepContext[Item]) -> object:
        return object()

    engine = engine_over(steps, InMemoryInvocations())
    refused = await answer(engine, command("a", "refuse"))
    invalid = await answer(engine, command("b", "refuse", input={"value": "many"}))
    not_json = await answer(engine, command("c", "opaque"))
    assert refused.error == ErrorInfo(
        type="OddNumber", message="we do not take odd numbers", retryable=False
    )
    assert invalid.error is not None
    assert (invalid.error.type, invalid.error.retryable) == ("InvalidInput", False)
    assert not_json.error is not None
    assert (not_json.error.type, not_json.error.retryable) == ("InvalidOutput", False)


async def test_outputs_are_stored_as_json_data() -> None:
    """What a body returns is stored, and answered, as the JSON it encodes to: models by alias,
    tuples as lists, keys as strings — the same on the first answer and on a republish."""
    steps = StepRegistry()

    @steps.step("shapes")
    async def shapes(ctx: StepContext[Item]) -> dict[Any, Any]:
        return {"model": EchoOutput(doubled_value=2), "pair": (1, 2), 3: None}

    engine = engine_over(steps, InMemoryInvocations())
    first = await answer(engine, command(step="shapes"))
    again = await answer(engine, command(step="shapes"))
    assert first.output == again.output == {"model": {"doubledValue": 2}, "pair": [1, 2], "3": None}


@pytest.mark.parametrize(
    ("output", "where"),
    [
        ({"note": "a\x00b"}, "at note,"),
        ({"lines": ["ok", {"bad\x00key": 1}]}, "at lines.1.bad"),
        ({"text": "\udcff"}, "at text,"),
        ({"count": 2**64}, "Integer exceeds 64-bit range"),
    ],
)
async def test_an_output_postgresql_cannot_store_fails_for_good_naming_the_place(
    output: dict[str, Any], where: str
) -> None:
    """An output PostgreSQL would refuse (NUL, a lone surrogate, an integer beyond 64 bits) fails
    the invocation non-retryably, saying where — rather than failing the batch that records it,
    again on every redelivery, or being dead-lettered later by the orchestrator."""
    calls: Counter[str] = Counter()
    steps = StepRegistry()

    @steps.step("unstorable")
    async def unstorable(ctx: StepContext[Item]) -> dict[str, Any]:
        calls[ctx.workflow_id] += 1
        return output

    records = InMemoryInvocations()
    engine = engine_over(steps, records)
    failed = await answer(engine, command(step="unstorable"))
    assert failed.status is StepResultStatus.FAILED
    assert failed.error is not None
    assert (failed.error.type, failed.error.retryable) == ("OutputNotStorable", False)
    assert failed.error.message.startswith("the output cannot be stored")
    assert where in failed.error.message
    assert "\x00" not in failed.error.message
    assert await answer(engine, command(step="unstorable")) == failed
    assert calls["wf"] == 1
    assert record(records, command(step="unstorable")).status is InvocationStatus.FAILED


async def test_an_error_that_quotes_a_bad_value_is_still_recorded() -> None:
    """An exception whose message holds what PostgreSQL refuses is recorded with it escaped: the
    failure must not itself be impossible to store."""
    steps = StepRegistry()

    @steps.step("quote")
    async def quote(ctx: StepContext[Item]) -> None:
        raise ValueError("cannot parse 'a\x00b\udcff'")

    failed = await answer(engine_over(steps, InMemoryInvocations()), command(step="quote"))
    assert failed.error is not None
    assert failed.error.message == "cannot parse 'a\\u0000b\\udcff'"


async def test_a_batch_runs_each_invocation_once_in_one_commit() -> None:
    """Commands that arrived together are claimed, run and recorded in one transaction, and a
    copy of one of them in the same batch is answered from the first one's record."""
    calls: Counter[str] = Counter()
    records = InMemoryInvocations()
    engine = engine_over(echo_steps(calls), records)
    commands = [command(f"wf{i}") for i in range(5)]
    started = await engine.start([*commands, command("wf0")])
    results = await asyncio.gather(*(engine.finish(one) for one in started))
    assert all(calls[f"wf{i}"] == 1 for i in range(5))
    assert results[5] == results[0]
    assert records.commits == 1


async def test_an_older_attempt_meets_a_newer_holder_and_answers_nothing() -> None:
    """A stale command whose newer attempt's holder died must neither run nor answer (the
    orchestrator has moved on); the newer attempt's redelivery takes the row over."""
    calls: Counter[str] = Counter()
    records = InMemoryInvocations()
    records.put(
        ("wf", "echo", "0"),
        status=InvocationStatus.RUNNING,
        attempt=2,
        lease_owner="dead-worker",
        lease_seconds=-1.0,
    )
    engine = engine_over(echo_steps(calls), records)
    assert await engine.run(command(attempt=1)) is None
    assert calls["wf"] == 0
    taken_over = await answer(engine, command(attempt=2))
    assert (taken_over.status, calls["wf"]) == (StepResultStatus.SUCCEEDED, 1)
    assert record(records, command()).executions == 2


async def test_a_duplicate_waits_for_a_slow_body_and_answers_from_its_record() -> None:
    """With the claim committed as a lease (no inline budget), a second worker's copy waits for
    the live lease instead of running the body again, then answers with the same result."""
    calls: Counter[str] = Counter()
    started, gate, looked = asyncio.Event(), asyncio.Event(), asyncio.Event()
    steps = StepRegistry()

    @steps.step("slow")
    async def slow(ctx: StepContext[Item]) -> dict[str, int]:
        calls[ctx.workflow_id] += 1
        started.set()
        await gate.wait()
        return {"value": ctx.input.value}

    class Watched(InMemoryStore):
        async def get(self, cmd: StepCommand) -> Invocation | None:
            found = await super().get(cmd)
            if found is not None and found.lease_live:
                looked.set()
            return found

    records = InMemoryInvocations()
    config = EngineConfig(inline_budget=0)
    holder = engine_over(steps, records, store=records.store(owner="a"), config=config)
    copy = engine_over(
        steps, records, store=Watched(records, owner="b", lease_seconds=30.0), config=config
    )
    first = asyncio.create_task(holder.run(command(step="slow")))
    await started.wait()
    second = asyncio.create_task(copy.run(command(step="slow")))
    await looked.wait()
    gate.set()
    results = await asyncio.gather(first, second)
    assert results[0] == results[1]
    assert results[0] is not None
    assert results[0].output == {"value": 21}
    assert calls["wf"] == 1


async def test_transactional_steps_are_refused_in_memory() -> None:
    """A transactional body's writes share PostgreSQL's transaction: the in-memory records say
    so instead of pretending."""
    steps = StepRegistry()

    @steps.step("txn", transactional=True)
    async def txn(ctx: StepContext[Item]) -> None:
        await ctx.connection.execute("SELECT 1")

    with pytest.raises(NotInMemory):
        await engine_over(steps, InMemoryInvocations()).run(command(step="txn"))


async def test_a_body_publishes_through_the_engine() -> None:
    """ctx.publish goes out through what the engine was given (the worker's confirmed
    publisher in production)."""
    steps = StepRegistry()

    @steps.step("notify")
    async def notify(ctx: StepContext[Item]) -> None:
        await ctx.publish(
            ExternalRequest(
                message_id=f"ext:{ctx.workflow_id}",
                workflow_id=ctx.workflow_id,
                correlation_id="c",
                reply_to="r",
                payload={},
            ),
            routing_key="external.request",
            correlation_id="c",
        )

    published = Published()
    result = await answer(
        engine_over(steps, InMemoryInvocations(), publish=published), command(step="notify")
    )
    assert result.output is None
    [(message, routing_key, correlation_id)] = published.messages
    assert (message.message_id, routing_key, correlation_id) == ("ext:wf", "external.request", "c")


# -- any order of commands -----------------------------------------------------------------

_commands = st.lists(
    st.tuples(
        st.integers(0, 2),  # which invocation
        st.integers(1, 3),  # attempt
        st.booleans(),  # whether the body fails on this attempt
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(_commands, min_size=1, max_size=4))
def test_any_order_of_commands_runs_each_attempt_at_most_once(
    batches: list[list[tuple[int, int, bool]]],
) -> None:
    """Whatever arrives — copies, retries, late older attempts, in batches or not — a body runs
    at most once per attempt and never after it succeeded; every command is answered, a
    success on the asking attempt with the one recorded output."""
    asyncio.run(_run_batches(batches))


async def _run_batches(batches: Sequence[Sequence[tuple[int, int, bool]]]) -> None:
    runs: Counter[tuple[str, int]] = Counter()
    successes: Counter[str] = Counter()
    fails: dict[tuple[str, int], bool] = {}
    steps = StepRegistry()

    @steps.step("echo")
    async def echo(ctx: StepContext[Item]) -> dict[str, int]:
        runs[ctx.workflow_id, ctx.attempt] += 1
        if fails[ctx.workflow_id, ctx.attempt]:
            raise RuntimeError("boom")
        successes[ctx.workflow_id] += 1
        return {"attempt": ctx.attempt}

    engine = engine_over(steps, InMemoryInvocations())
    answered: dict[str, StepResult] = {}
    for batch in batches:
        commands = []
        for which, attempt, fail in batch:
            workflow_id = f"wf{which}"
            fails.setdefault((workflow_id, attempt), fail)
            commands.append(command(workflow_id, attempt=attempt))
        started = await engine.start(commands)
        results = await asyncio.gather(*(engine.finish(one) for one in started))
        for cmd, result in zip(commands, results, strict=True):
            assert result is not None
            if result.status is StepResultStatus.SUCCEEDED:
                assert result.attempt == cmd.attempt
                first = answered.setdefault(cmd.workflow_id, result)
                assert result.output == first.output
            else:
                assert result.attempt >= cmd.attempt
    assert all(count == 1 for count in runs.values())
    assert all(count <= 1 for count in successes.values())
