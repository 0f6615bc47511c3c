"""Programs in other languages take part, as the README says they can: the Node.js examples
(`examples/node`: amqplib, eventsource) and the synchronous-Python one (`examples/pika`) start
the `quote` workflow through the broker, serve its `price` step — which has no Python body — and
follow its event stream, against the system as the run command serves it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import pytest

from relayflow.contracts import workflow_id_for_key
from relayflow.topology import RESULT_KEY, START_KEY, Topology, step_key
from tests.contract.asyncapi_validation import Sent, channel_errors, committed_document
from tests.e2e.conftest import ROOT, System
from tests.support import read_sse, wait_for

pytestmark = pytest.mark.e2e

NODE_EXAMPLES = ROOT / "scripts" / "node-examples"
PIKA_EXAMPLE = ROOT / "examples" / "pika" / "quote.py"
# The examples' own default input: 3 x 250 + 1 x 1000 cents.
EXAMPLE_TOTAL_CENTS = 1750
ENDED = ("completed", "failed", "cancelled", "compensated", "compensation_failed")


def _unavailable(reason: str) -> None:
    """CI must run the Node examples: there, anything missing fails. Elsewhere it skips."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs the Node.js examples: install Node.js 20 and npm)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node_examples() -> None:
    """examples/node's packages, installed from its lock file (`.ci/run` installs them first)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"no {' or '.join(missing)} on PATH for examples/node")
    installed = subprocess.run(
        [str(NODE_EXAMPLES), "--install"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if installed.returncode != 0:
        _unavailable(f"scripts/node-examples --install failed:\n{installed.stderr[-2000:]}")


@dataclass
class Program:
    """A foreign program as a subprocess: each JSON line it prints, as it prints it."""

    name: str
    process: asyncio.subprocess.Process
    stderr: Path
    lines: list[dict[str, Any]] = field(default_factory=list)

    async def read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(orjson.loads(raw))

    def output(self) -> str:
        return f"{self.name} stdout: {self.lines}\nstderr:\n{self.stderr.read_text()[-3000:]}"

    async def line(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """The first line printed that `predicate` accepts, waiting for it."""

        async def printed() -> dict[str, Any] | None:
            found = next((line for line in self.lines if predicate(line)), None)
            if found is None and self.process.returncode is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode}")
            return found

        try:
            found: dict[str, Any] = await wait_for(printed, timeout=timeout, interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None
        return found

    async def exited(self, timeout: float = 60) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"still running after {timeout} s\n{self.output()}") from None


@contextlib.asynccontextmanager
async def program(
    system: System, tmp_path: Path, name: str, argv: Sequence[str]
) -> AsyncIterator[Program]:
    """Run `argv` against `system` (its broker, namespace and gateway); stopped with SIGTERM
    when the block ends (killed if it does not stop)."""
    stderr = tmp_path / f"{name}.stderr"
    with stderr.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env={**system.env, "RELAYFLOW_URL": system.base_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    running = Program(name, process, stderr)
    reader = asyncio.create_task(running.read())
    try:
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await reader


def node(script: str, *args: str) -> list[str]:
    return [str(NODE_EXAMPLES), script, *args]


def pika(*args: str) -> list[str]:
    return [sys.executable, str(PIKA_EXAMPLE), *args]


@contextlib.asynccontextmanager
async def price_service(
    system: System, tmp_path: Path, argv: Sequence[str]
) -> AsyncIterator[Program]:
    """A foreign service of the `price` step, consuming once this yields."""
    async with program(system, tmp_path, "price", argv) as service:
        await service.line(lambda line: "serving" in line)
        yield service


async def start_through_broker(system: System, tmp_path: Path, argv: Sequence[str]) -> str:
    async with program(system, tmp_path, f"start-{uuid.uuid4().hex[:6]}", argv) as starter:
        assert await starter.exited() == 0, starter.output()
        started = await starter.line(lambda line: "workflowId" in line)
    workflow_id: str = started["workflowId"]
    return workflow_id


async def ended(client: httpx.AsyncClient, system: System, workflow_id: str) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        response = await client.get(f"{system.base_url}/workflows/{workflow_id}")
        if response.status_code == 200 and response.json()["status"] in ENDED:
            state: dict[str, Any] = response.json()
            return state
        return None

    state: dict[str, Any] = await wait_for(finished, timeout=60, interval=0.1)
    return state


def step(state: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in state["steps"] if s["name"] == name]
    assert len(found) == 1, state["steps"]
    return found[0]


async def stream_of(
    client: httpx.AsyncClient, system: System, workflow_id: str
) -> list[dict[str, Any]]:
    """Every event of a finished workflow, read whole from a fresh stream."""
    events: list[dict[str, Any]] = []
    url = f"{system.base_url}/workflows/{workflow_id}/events"
    async with asyncio.timeout(30), client.stream("GET", url) as response:
        async for event in read_sse(response):
            events.append(event)
            if event["event"] in {f"workflow.{status}" for status in ENDED}:
                break
    return events


async def history(client: httpx.AsyncClient, system: System, workflow_id: str) -> list[str]:
    return [event["id"] for event in await stream_of(client, system, workflow_id)]


@contextlib.asynccontextmanager
async def captured(
    system: System, connection: aio_pika.abc.AbstractConnection, keys: Sequence[str]
) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A queue of our own that receives a copy of every message sent on `keys`."""
    channel = await connection.channel()
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    main = await channel.get_exchange(Topology(system.namespace).exchange, ensure=False)
    for key in keys:
        await queue.bind(main, routing_key=key)
    try:
        yield queue
    finally:
        await channel.close()


async def drain(queue: aio_pika.abc.AbstractQueue) -> list[aio_pika.abc.AbstractIncomingMessage]:
    messages = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        messages.append(message)
    return messages


# -- Node.js ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("node_examples")
async def test_node_starts_a_workflow_and_serves_its_step(system: System, tmp_path: Path) -> None:
    """A start published from Node.js names the run the gateway would (the same key, the same
    id, however often it is sent) and a step served from Node.js completes it, its output flowing
    on to the next Python step."""
    key = f"node-{uuid.uuid4()}"
    async with price_service(system, tmp_path, node("serve-price.mjs")) as service:
        first = await start_through_broker(system, tmp_path, node("start.mjs", "--key", key))
        again = await start_through_broker(system, tmp_path, node("start.mjs", "--key", key))
        assert first == again == workflow_id_for_key("quote", key)
        async with httpx.AsyncClient(timeout=10) as client:
            state = await ended(client, system, first)
            events = await history(client, system, first)
        answered = await service.line(lambda line: first in line.get("command", ""))
    assert state["status"] == "completed", state
    assert state["output"] == {
        "quoteId": first,
        "totalCents": EXAMPLE_TOTAL_CENTS,
        # `price` read `normalize`'s output from `dependencies`, not the raw input's "eur".
        "currency": "EUR",
        "pricedBy": "node",
        "text": "4 units in 2 lines: 17.50 EUR",
    }
    assert answered == {
        "command": f"cmd:{first}:price:0:1",
        "result": f"res:{first}:price:0:1",
        "status": "succeeded",
        "repeated": False,
    }
    # One command of this run, answered once (the service may also answer what earlier tests
    # left on the queue).
    mine = [line["command"] for line in service.lines if first in line.get("command", "")]
    assert mine == [answered["command"]]
    assert events == [str(seq) for seq in range(1, len(events) + 1)]


@pytest.mark.usefixtures("node_examples")
async def test_node_step_answers_a_copy_of_its_command_with_the_same_result(
    system: System, tmp_path: Path, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    """A command that comes again (a redelivery, a copy) is answered with the stored result, the
    same message id and body, which the orchestrator's inbox counts once: the workflow does not
    move again."""
    key = f"node-copy-{uuid.uuid4()}"
    async with (
        captured(system, amqp_connection, [step_key("price"), RESULT_KEY]) as capture,
        price_service(system, tmp_path, node("serve-price.mjs")) as service,
        httpx.AsyncClient(timeout=10) as client,
    ):
        workflow_id = await start_through_broker(system, tmp_path, node("start.mjs", "--key", key))
        assert (await ended(client, system, workflow_id))["status"] == "completed"
        before = await history(client, system, workflow_id)
        mine = [
            message
            for message in await drain(capture)
            if orjson.loads(message.body)["workflowId"] == workflow_id
        ]
        (command,) = (m for m in mine if m.routing_key == step_key("price"))
        (result,) = (m for m in mine if m.routing_key == RESULT_KEY)
        channel = await amqp_connection.channel(publisher_confirms=True)
        main = await channel.get_exchange(Topology(system.namespace).exchange, ensure=False)
        await main.publish(aio_pika.Message(command.body), routing_key=step_key("price"))
        await channel.close()
        again = await service.line(
            lambda line: line.get("repeated") is True and workflow_id in line["command"]
        )
        # Behind the copy's result on the orchestrator's queue: once this one has completed,
        # the copy has been taken in before it.
        marker = await start_through_broker(
            system, tmp_path, node("start.mjs", "--key", f"{key}-marker")
        )
        assert (await ended(client, system, marker))["status"] == "completed"
        after = await history(client, system, workflow_id)
        copies = [
            m
            for m in await drain(capture)
            if m.routing_key == RESULT_KEY and orjson.loads(m.body)["workflowId"] == workflow_id
        ]
    assert again["command"] == orjson.loads(command.body)["messageId"]
    # What Node.js sent travels as the AsyncAPI document says, like relayflow's own messages.
    for message in (command, result):
        assert channel_errors(committed_document(), Sent.received(message, system.namespace)) == (
            "stepRun" if message is command else "stepResult",
            orjson.loads(message.body)["type"],
            [],
        )
    assert [copy.body for copy in copies] == [result.body]
    assert [copy.message_id for copy in copies] == [result.message_id]
    assert result.message_id == f"res:{workflow_id}:price:0:1"
    assert after == before


@pytest.mark.usefixtures("node_examples")
async def test_node_step_errors_as_the_schema_says(system: System, tmp_path: Path) -> None:
    """A non-retryable error fails the workflow at its first attempt, its type and message as
    the step service sent them; a retryable one is tried again, and the next attempt's answer
    completes it."""
    refused = {"currency": "xxx", "items": [{"sku": "A-1", "qty": 1, "unitCents": 5}]}
    flaky = {"currency": "usd", "items": [{"sku": "flaky-1", "qty": 2, "unitCents": 5}]}
    async with (
        price_service(system, tmp_path, node("serve-price.mjs")) as service,
        httpx.AsyncClient(timeout=10) as client,
    ):
        failed_id = await start_through_broker(
            system,
            tmp_path,
            node(
                "start.mjs",
                "--key",
                f"refused-{uuid.uuid4()}",
                "--input",
                orjson.dumps(refused).decode(),
            ),
        )
        retried_id = await start_through_broker(
            system,
            tmp_path,
            node(
                "start.mjs",
                "--key",
                f"flaky-{uuid.uuid4()}",
                "--input",
                orjson.dumps(flaky).decode(),
            ),
        )
        failed = await ended(client, system, failed_id)
        retried = await ended(client, system, retried_id)
        retried_events = [e["event"] for e in await stream_of(client, system, retried_id)]
    assert failed["status"] == "failed", failed
    price = step(failed, "price")
    assert price["attempts"] == 1
    assert price["error"]["type"] == "UnsupportedCurrency"
    assert price["error"]["retryable"] is False
    assert "cannot price in XXX" in price["error"]["message"]
    assert retried["status"] == "completed", retried
    assert step(retried, "price")["attempts"] == 2
    assert retried["output"]["totalCents"] == 10
    assert "step.retrying" in retried_events
    results = {line["result"]: line["status"] for line in service.lines if "result" in line}
    assert results[f"res:{retried_id}:price:0:1"] == "failed"
    assert results[f"res:{retried_id}:price:0:2"] == "succeeded"


@pytest.mark.usefixtures("node_examples")
async def test_node_event_stream_resumes_after_the_gateway_restarts(
    system: System, tmp_path: Path
) -> None:
    """The Node.js `eventsource` client, cut off by a gateway SIGKILL while the workflow waits
    for its foreign step, reconnects by itself with Last-Event-ID and receives every later event
    once: no gap, no duplicate, through the terminal event."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{system.base_url}/workflows/quote",
            json={"currency": "gbp", "items": [{"sku": "C-3", "qty": 5, "unitCents": 100}]},
        )
        assert response.status_code == 202, response.text
        workflow_id = response.json()["workflowId"]
        async with program(system, tmp_path, "follow", node("follow.mjs", workflow_id)) as follow:
            # No price service yet: the workflow waits for its `price` step.
            waiting = await follow.line(
                lambda line: (
                    line.get("event") == "step.started" and line["data"].get("stepName") == "price"
                )
            )
            await system.kill("gateway")
            await system.start("gateway")
            await system.wait_ready(client)
            await follow.line(lambda line: line.get("connect", 0) >= 2)
            async with price_service(system, tmp_path, node("serve-price.mjs")):
                assert await follow.exited() == 0, follow.output()
        expected = await history(client, system, workflow_id)
    events = [line for line in follow.lines if "event" in line]
    connects = [line for line in follow.lines if "connect" in line]
    assert [e["id"] for e in events] == expected == [str(n) for n in range(1, len(expected) + 1)]
    assert events[-1]["event"] == "workflow.completed"
    assert events[-1]["data"]["workflowId"] == workflow_id
    assert connects[0]["lastEventId"] is None
    # Every reconnect (some may have met the gateway still down) resumed after the last event
    # seen before the cut.
    assert len(connects) >= 2
    assert {c["lastEventId"] for c in connects[1:]} == {waiting["id"]}


@pytest.mark.usefixtures("node_examples")
async def test_node_event_stream_resumes_from_a_given_event(system: System, tmp_path: Path) -> None:
    """A client that drops its connection itself and opens a new one with Last-Event-ID (or
    starts with one it kept) gets exactly the events after it."""
    key = f"node-resume-{uuid.uuid4()}"
    async with (
        price_service(system, tmp_path, node("serve-price.mjs")),
        httpx.AsyncClient(timeout=10) as client,
    ):
        workflow_id = await start_through_broker(system, tmp_path, node("start.mjs", "--key", key))
        await ended(client, system, workflow_id)
        expected = await history(client, system, workflow_id)
    async with program(
        system, tmp_path, "dropping", node("follow.mjs", workflow_id, "--drop-after", "2")
    ) as dropping:
        assert await dropping.exited() == 0, dropping.output()
    async with program(
        system, tmp_path, "late", node("follow.mjs", workflow_id, "--last-event-id", "3")
    ) as late:
        assert await late.exited() == 0, late.output()
    assert [line["id"] for line in dropping.lines if "event" in line] == expected
    assert [line["lastEventId"] for line in dropping.lines if "connect" in line] == [None, "2"]
    assert [line["id"] for line in late.lines if "event" in line] == expected[3:]
    assert [line["lastEventId"] for line in late.lines if "connect" in line] == ["3"]


# -- pika ------------------------------------------------------------------------------------


async def test_pika_starts_a_workflow_and_serves_its_step(system: System, tmp_path: Path) -> None:
    """The same from synchronous Python with pika: the start names the gateway's run, the
    step completes it, and a non-retryable error fails another at its first attempt."""
    key = f"pika-{uuid.uuid4()}"
    refused = {"currency": "jpy", "items": [{"sku": "A-1", "qty": 1, "unitCents": 5}]}
    async with (
        price_service(system, tmp_path, pika("serve")) as service,
        httpx.AsyncClient(timeout=10) as client,
    ):
        workflow_id = await start_through_broker(system, tmp_path, pika("start", "--key", key))
        failed_id = await start_through_broker(
            system,
            tmp_path,
            pika("start", "--key", f"{key}-jpy", "--input", orjson.dumps(refused).decode()),
        )
        state = await ended(client, system, workflow_id)
        failed = await ended(client, system, failed_id)
    assert workflow_id == workflow_id_for_key("quote", key)
    assert state["status"] == "completed", state
    assert state["output"]["totalCents"] == EXAMPLE_TOTAL_CENTS
    assert state["output"]["pricedBy"] == "pika"
    assert failed["status"] == "failed", failed
    assert step(failed, "price")["attempts"] == 1
    assert step(failed, "price")["error"]["type"] == "UnsupportedCurrency"
    answered = {
        line["result"]: line["status"]
        for line in service.lines
        if workflow_id in line.get("result", "") or failed_id in line.get("result", "")
    }
    assert answered == {
        f"res:{workflow_id}:price:0:1": "succeeded",
        f"res:{failed_id}:price:0:1": "failed",
    }


async def test_a_start_with_no_amqp_properties_is_taken(
    system: System, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    """The README promises that no AMQP property is required: a StartWorkflow that is only its
    JSON body (no message id, content type, type or headers) starts its run."""
    workflow_id = f"wf_bare_{uuid.uuid4().hex}"
    start = {
        "type": "StartWorkflow",
        "messageId": f"bare-{uuid.uuid4()}",
        "workflowId": workflow_id,
        "createdAt": "2026-12-04T12:00:00Z",
        "workflowName": "quote",
        "input": {"currency": "EUR", "items": [{"sku": "A-1", "qty": 1, "unitCents": 1}]},
    }
    channel = await amqp_connection.channel(publisher_confirms=True, on_return_raises=True)
    main = await channel.get_exchange(Topology(system.namespace).exchange, ensure=False)
    await main.publish(aio_pika.Message(orjson.dumps(start)), routing_key=START_KEY)
    await channel.close()
    async with httpx.AsyncClient(timeout=10) as client:

        async def pricing() -> bool:
            response = await client.get(f"{system.base_url}/workflows/{workflow_id}")
            return response.status_code == 200 and step(response.json(), "price")["status"] == (
                "running"
            )

        await wait_for(pricing, timeout=30)
        # No price service here: leave nothing for the next test's service to answer.
        cancelled = await client.post(f"{system.base_url}/workflows/{workflow_id}/cancel", json={})
        assert cancelled.status_code == 202, cancelled.text
