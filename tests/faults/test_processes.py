"""SIGKILL and SIGTERM of each service while workflows are in flight."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from tests.support import read_sse, wait_for
from tests.tools.cluster import SERVICES, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def ledger_env(delay: float, steps: str = "") -> dict[str, str]:
    return {"RELAYFLOW_LEDGER_DELAY": str(delay), "RELAYFLOW_LEDGER_DELAY_STEPS": steps}


@pytest.mark.parametrize("cluster_env", [ledger_env(1.0, "left")])
async def test_step_service_killed_after_commit_before_ack(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    """The worst moment for a step service to die: its effect and success are committed but the
    result is not published and the command not acked. The redelivery must republish the stored
    result, not run the body again."""
    ids = await cluster.submit_many(client, 5, "after-commit")
    await cluster.wait_in_flight(step="left")
    # From now on nothing the step service sends reaches the broker: its result publish hangs.
    cluster.links["steps"].amqp.blackhole()
    await cluster.wait_step_state("succeeded", step="left")
    await cluster.kill("steps")
    cluster.links["steps"].amqp.pass_through()
    await cluster.start("steps")
    await cluster.assert_exactly_once(ids)


@pytest.mark.parametrize("cluster_env", [ledger_env(2.0, "left")])
async def test_step_service_killed_mid_transaction(
    cluster: Cluster, client: httpx.AsyncClient
) -> None:
    """Killed while a transactional body holds its uncommitted effect: the effect and the claim
    must roll back together, and the redelivery must run the invocation once more."""
    ids = await cluster.submit_many(client, 5, "mid-tx")
    await cluster.wait_in_flight(least=2, step="left")
    settled = await cluster.db().fetchval(
        "SELECT count(*) FROM step_invocations WHERE step_name = 'left'"
    )
    await cluster.kill("steps")
    assert settled < len(ids), "the kill came after every body had committed"
    await cluster.start("steps")
    await cluster.assert_exactly_once(ids)


@pytest.mark.parametrize("cluster_env", [ledger_env(0.5)])
async def test_orchestrator_killed(cluster: Cluster, client: httpx.AsyncClient) -> None:
    """SIGKILL of the orchestrator mid-run: committed batches are not applied twice, uncommitted
    ones come back, and every workflow completes."""
    ids = await cluster.submit_many(client, 20, "orch-kill")
    await cluster.wait_in_flight(least=2)
    await cluster.kill("orchestrator")
    await cluster.start("orchestrator")
    await cluster.assert_exactly_once(ids)


async def follow(
    client: httpx.AsyncClient, url: str, last_event_id: str | None, stop_after: int | None
) -> list[dict[str, Any]]:
    """Read a workflow's stream until its terminal event, the stream breaks, or `stop_after`."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[dict[str, Any]] = []
    try:
        async with client.stream("GET", url, headers=headers) as response:
            async for event in read_sse(response):
                events.append(event)
                if event.get("event", "").startswith("workflow.") and event["event"] != (
                    "workflow.started"
                ):
                    break
                if stop_after is not None and len(events) >= stop_after:
                    break
    except (httpx.TransportError, httpx.RemoteProtocolError):
        pass
    return events


@pytest.mark.parametrize("cluster_env", [ledger_env(0.5)])
async def test_gateway_killed(cluster: Cluster, client: httpx.AsyncClient) -> None:
    """SIGKILL of the gateway: every workflow it accepted still completes, and a client that
    reconnects its event stream with Last-Event-ID sees every event once, in order."""
    ids = await cluster.submit_many(client, 10, "gw-kill")
    assert len(ids) == 10
    url = f"{cluster.base_url}/workflows/{ids[0]}/events"
    first = await follow(client, url, None, stop_after=2)
    assert first, "the stream gave nothing before the kill"
    await cluster.kill("gateway")
    await cluster.start("gateway")
    await cluster.wait_ready(client)
    rest = await follow(client, url, first[-1]["id"], stop_after=None)
    seqs = [int(e["id"]) for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))
    assert rest[-1]["event"] == "workflow.completed"
    await cluster.assert_exactly_once(ids)


@pytest.mark.parametrize("cluster_env", [{"RELAYFLOW_EXTERNAL_REPLY_DELAY": "1.5"}])
async def test_external_system_killed(cluster: Cluster, client: httpx.AsyncClient) -> None:
    """SIGKILL of the external system with requests unanswered: they are redelivered when it is
    back, each reply counts once, and every formSubmission completes with one finalize."""
    answers = await asyncio.gather(
        *(
            client.post(
                f"{cluster.base_url}/submit",
                json={"name": f"Ada {i}", "email": "ada@example.com", "message": str(uuid.uuid4())},
            )
            for i in range(8)
        )
    )
    ids = [answer.json()["workflowId"] for answer in answers if answer.status_code == 202]
    assert len(ids) == 8

    async def waiting() -> bool:
        count = await cluster.db().fetchval(
            "SELECT count(*) FROM workflows WHERE id = ANY($1)"
            " AND steps->'awaitResponse'->>'status' = 'waiting'",
            ids,
        )
        return bool(count >= 2)

    await wait_for(waiting, timeout=60, what="workflows waiting for the external reply")
    await cluster.kill("external")
    await cluster.start("external")
    statuses = await cluster.wait_terminal(ids)
    assert set(statuses.values()) == {"completed"}
    counts = await cluster.db().fetch(
        "SELECT finalize_count FROM form_submissions WHERE workflow_id = ANY($1)", ids
    )
    assert sorted(row["finalize_count"] for row in counts) == [1] * len(ids)


@pytest.mark.parametrize("cluster_env", [ledger_env(1.0)])
@pytest.mark.parametrize("service", SERVICES)
async def test_sigterm_is_graceful(
    cluster: Cluster, client: httpx.AsyncClient, service: str
) -> None:
    """SIGTERM mid-run: the service stops consuming, finishes or hands back what it holds within
    its grace period, exits 0, and once it is back nothing is lost or done twice."""
    ids = await cluster.submit_many(client, 10, f"term-{service}")
    assert len(ids) == 10
    await cluster.wait_in_flight(least=2)
    stream: asyncio.Task[list[dict[str, Any]]] | None = None
    if service == "gateway":
        # An open event stream must not hold the gateway's shutdown hostage.
        url = f"{cluster.base_url}/workflows/{ids[-1]}/events"
        stream = asyncio.create_task(follow(client, url, None, stop_after=None))
        await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    code = await cluster.terminate(service, timeout=30)
    assert code == 0, cluster.logs(service)[-3000:]
    assert loop.time() - started < 20, "longer than the grace period"
    if stream is not None:
        await asyncio.wait_for(stream, 10)
    await cluster.start(service)
    await cluster.wait_ready(client)
    await cluster.assert_exactly_once(ids)


@pytest.mark.parametrize("cluster_env", [ledger_env(0.5)])
@pytest.mark.parametrize("service", SERVICES)
async def test_sigterm_while_the_broker_does_not_answer(
    cluster: Cluster, client: httpx.AsyncClient, service: str
) -> None:
    """A stop must not wait for a broker that does not answer: with the service's broker link
    black-holed and its connection cut (it is reconnecting into the silence), SIGTERM still ends
    it within its grace period with exit 0; back with the link, nothing is lost or done twice."""
    ids = await cluster.submit_many(client, 5, f"deaf-{service}")
    assert len(ids) == 5
    await cluster.wait_in_flight(least=1)
    link = cluster.links[service].amqp
    attempts = link.connections_accepted
    link.blackhole()
    await link.cut()
    loop = asyncio.get_running_loop()
    try:

        async def reconnecting() -> bool:
            return link.connections_accepted > attempts

        # Stop it once it is reconnecting into the silence (aio-pika tries every 5 s).
        await wait_for(reconnecting, timeout=20, what=f"{service} reconnecting")
        started = loop.time()
        code = await cluster.terminate(service, timeout=60)
        elapsed = loop.time() - started
    finally:
        link.pass_through()
    assert code == 0, cluster.logs(service)[-3000:]
    assert elapsed < 30, f"took {elapsed:.1f}s to stop"
    await cluster.start(service)
    await cluster.wait_ready(client)
    await cluster.assert_exactly_once(ids)
