"""`relayflow`, the command an operator types, against the whole system running as processes:
`start --wait` exits 0 for a run that completes and 1 for one that fails; `tail`, `status`,
`list`, `signal` and `cancel` through the gateway; errors exit 2 with the gateway's reason; and
the operator commands on the same namespace and database."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import ROOT, System
from tests.support import wait_for

pytestmark = pytest.mark.e2e

STEPS = ["validate", "persist", "publishToMQ", "awaitResponse", "finalize"]


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def launch(system: System, *args: str) -> asyncio.subprocess.Process:
    """`relayflow …` as a process, pointed at this system's gateway (RELAYFLOW_URL) and at its
    broker, namespace and database (the services' own variables)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relayflow.cli",
        *args,
        cwd=ROOT,
        env={**system.env, "RELAYFLOW_URL": system.base_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process, timeout: float = 90) -> Ran:
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def relayflow(system: System, *args: str) -> Ran:
    return await finished(await launch(system, *args))


def form(email: str = "ada@example.com") -> str:
    return json.dumps({"name": "Ada", "email": email, "message": f"hello {uuid.uuid4()}"})


async def test_start_wait_exits_0_when_the_workflow_completes(system: System) -> None:
    """The promise of `--wait`: the id at once on stdout, the progress on stderr, and exit 0
    only once the run has completed; then `status`, `tail` and `list` see the same run."""
    ran = await relayflow(system, "workflows", "start", "formSubmission", "-i", form(), "--wait")
    assert ran.code == 0, ran.err
    [workflow_id] = ran.lines
    progress = ran.err.splitlines()
    assert f"{workflow_id}: 0/5 steps, running validate" in progress
    assert progress[-1].startswith(f"{workflow_id} completed in ")
    assert progress[-1].endswith("(5/5 steps)")

    status = await relayflow(system, "workflows", "status", workflow_id, "--json")
    assert status.code == 0, status.err
    state = json.loads(status.out)
    assert state["status"] == "completed"
    assert [step["name"] for step in state["steps"]] == STEPS
    text = await relayflow(system, "workflows", "status", workflow_id)
    assert text.lines[0] == (
        f"{workflow_id}  formSubmission (version {state['version']})  completed"
    )

    # A finished run's events, replayed from the first to its end.
    tail = await relayflow(system, "workflows", "tail", workflow_id)
    assert tail.code == 0, tail.err
    assert [line.split()[2:4] for line in tail.lines if "step.completed" in line] == [
        ["step.completed", step] for step in STEPS
    ]
    assert tail.lines[0].split()[:3] == ["1", tail.lines[0].split()[1], "workflow.started"]
    assert "workflow.completed" in tail.lines[-1]
    as_json = await relayflow(system, "workflows", "tail", workflow_id, "--json")
    events = [json.loads(line) for line in as_json.lines]
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "workflow.completed"

    listed = await relayflow(
        system,
        "workflows",
        "list",
        "--workflow",
        "formSubmission",
        "--status",
        "completed",
        "--json",
    )
    assert listed.code == 0, listed.err
    assert workflow_id in [json.loads(line)["workflowId"] for line in listed.lines]


async def test_start_wait_exits_1_when_the_workflow_fails(system: System) -> None:
    """A run that fails (its validate step refuses a disposable address, for good) exits 1,
    and stderr says which step failed and why."""
    ran = await relayflow(
        system,
        "workflows",
        "start",
        "formSubmission",
        "-i",
        form("ada@mailinator.com"),
        "--wait",
    )
    assert ran.code == 1, (ran.out, ran.err)
    [workflow_id] = ran.lines
    last = ran.err.splitlines()[-1]
    assert last.startswith(f"{workflow_id} failed after ")
    assert "DisposableEmail" in last
    assert "(step validate)" in last
    tail = await relayflow(system, "workflows", "tail", workflow_id)
    assert tail.code == 1
    assert "workflow.failed" in tail.lines[-1]


async def test_start_wait_outlives_a_gateway_restart(system: System) -> None:
    """The gateway is SIGKILLed while `--wait` follows a run: the stream is reopened after the
    last event seen once a gateway answers again, and the run is still followed to its end."""
    waiting = await launch(system, "workflows", "start", "formSubmission", "-i", form(), "--wait")
    assert waiting.stderr is not None
    first = await asyncio.wait_for(waiting.stderr.readline(), 30)
    assert b"/5 steps" in first
    await system.kill("gateway")
    await system.start("gateway")
    async with httpx.AsyncClient(timeout=10) as client:
        await system.wait_ready(client)
    ran = await finished(waiting)
    assert ran.code == 0, ran.err
    assert "reconnecting after event" in ran.err
    assert ran.err.splitlines()[-1].endswith("(5/5 steps)")


async def test_a_signal_completes_a_waiting_run_that_start_wait_follows(system: System) -> None:
    """`start --wait` on a run that waits for a person: it waits too, and exits 0 once the
    decision sent with `workflows signal` has let the run complete."""
    request = json.dumps({"requestId": f"r-{uuid.uuid4()}", "amount": 120})
    waiting = await launch(system, "workflows", "start", "approval", "-i", request, "--wait")
    assert waiting.stdout is not None
    workflow_id = (await asyncio.wait_for(waiting.stdout.readline(), 30)).decode().strip()
    assert workflow_id.startswith("wf_")
    await decision_awaited(system, workflow_id)
    signal = await relayflow(
        system,
        "workflows",
        "signal",
        workflow_id,
        "decision",
        "--data",
        '{"approved": true, "by": "ada"}',
        "--by",
        "ada",
        "--key",
        "decided-once",
    )
    assert signal.code == 0, signal.err
    assert signal.out.startswith(f"signal decision for {workflow_id} accepted")
    ran = await finished(waiting)
    assert ran.code == 0, ran.err
    assert "completed" in ran.err.splitlines()[-1]


async def decision_awaited(system: System, workflow_id: str) -> None:
    async def waiting() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{system.base_url}/workflows/{workflow_id}")
        if response.status_code != 200:
            return False
        steps = {step["name"]: step["status"] for step in response.json()["steps"]}
        return steps.get("decision") == "waiting"

    await wait_for(waiting, timeout=30, interval=0.1, what=f"{workflow_id} waiting for decision")


async def test_cancel_ends_a_run_that_tail_follows(system: System) -> None:
    """`tail` of a run in progress prints its events as they happen; a `cancel` ends the run
    (its reservation undone: compensated), and tail ends with it, exit 1: not completed."""
    request = json.dumps({"requestId": f"r-{uuid.uuid4()}", "amount": 5})
    started = await relayflow(system, "workflows", "start", "approval", "-i", request)
    assert started.code == 0, started.err
    [workflow_id] = started.lines
    await decision_awaited(system, workflow_id)
    tail = await launch(system, "workflows", "tail", workflow_id)
    cancel = await relayflow(system, "workflows", "cancel", workflow_id, "--reason", "no budget")
    assert cancel.code == 0, cancel.err
    assert cancel.out.startswith(f"cancel of {workflow_id} accepted")
    followed = await finished(tail)
    assert followed.code == 1, followed.err
    seen = [line.split()[2] for line in followed.lines]
    assert seen[0] == "workflow.started"
    assert "workflow.compensating" in seen
    assert seen[-1] == "workflow.compensated"
    state = json.loads((await relayflow(system, "workflows", "status", workflow_id, "--json")).out)
    assert state["status"] == "compensated"
    again = await relayflow(system, "workflows", "cancel", workflow_id)
    assert again.code == 2
    assert "only a running workflow can be cancelled" in again.err


async def test_the_same_key_starts_one_workflow(system: System) -> None:
    """`--key` is the Idempotency-Key: a command run twice (a timeout, a doubt) is one run."""
    key = f"cli-{uuid.uuid4()}"
    body = form()
    first = await relayflow(
        system, "workflows", "start", "formSubmission", "-i", body, "--key", key
    )
    again = await relayflow(
        system, "workflows", "start", "formSubmission", "-i", body, "--key", key
    )
    assert (first.code, again.code) == (0, 0), (first.err, again.err)
    assert first.out == again.out


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        pytest.param(("start", "noSuchFlow"), "405 no workflow named", id="unknown-workflow"),
        pytest.param(
            ("start", "formSubmission", "-i", '{"name": "Ada"}'),
            "email: Field required",
            id="input",
        ),
        pytest.param(("status", "wf_nobody_knows"), "no workflow with id", id="unknown-id"),
    ],
)
async def test_the_gateways_refusal_exits_2_with_its_reason(
    system: System, args: tuple[str, ...], problem: str
) -> None:
    """What the gateway refuses, the operator reads in its words (and the field at fault)."""
    ran = await relayflow(system, "workflows", *args)
    assert ran.code == 2, ran.out
    assert problem in ran.err
    assert ran.err.startswith("relayflow: ")


async def test_operator_commands_on_the_running_system(system: System) -> None:
    """The operator side of the same CLI: the system's database is migrated already (nothing
    to apply) and its dead-letter queue can be listed."""
    migrated = await relayflow(system, "migrate", "--json")
    assert migrated.code == 0, migrated.err
    assert migrated.out == ""
    letters = await relayflow(system, "dead-letters", "list")
    assert letters.code == 0, letters.err
    assert letters.lines[-1].endswith(f"in {system.namespace}.dead-letters")
