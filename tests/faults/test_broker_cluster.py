"""The whole system on a three-node RabbitMQ cluster: the node a service is connected to is
killed, hung or cut off mid-workflow, and the service moves to another node and carries on —
every workflow completes, every step's effect is committed once, every queue drains.

Each service reaches each node through a fault proxy of its own (`tests.tools.cluster`), so the
test sees which node a service holds its connection to, and a cut takes that node away from
every service at once. Recovery — from the fault to the service connected to another node, and
to the first workflow started after the fault completing — is printed per fault kind
(`pytest -s`) and kept in `RECOVERIES` for the summary at the end of the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support import wait_for
from tests.tools.cluster import Cluster, running_cluster
from tests.tools.ledger import WORKFLOW_NAME
from tests.tools.private_services import PrivatePostgres
from tests.tools.rabbit_cluster import RabbitCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FAULTS = ("kill", "hang", "cut")
SERVICES = ("gateway", "orchestrator", "steps")
# A hung node is noticed after about three heartbeats: (2 + 1) * 3 = 9 s.
HEARTBEAT = "2"
# Each case takes about a minute (most of it starting the services), so CI runs each fault kind
# and each service once; RELAYFLOW_CLUSTER_FAULTS=all runs every service under every fault.
BOUNDED = [("steps", "kill"), ("gateway", "hang"), ("orchestrator", "cut")]
CASES = (
    [(service, kind) for service in SERVICES for kind in FAULTS]
    if os.environ.get("RELAYFLOW_CLUSTER_FAULTS") == "all"
    else BOUNDED
)


@dataclass(frozen=True)
class Recovery:
    service: str
    fault: str
    reconnected: float
    first_completed: float


RECOVERIES: list[Recovery] = []


def ledger_env(delay: float) -> dict[str, str]:
    return {"RELAYFLOW_LEDGER_DELAY": str(delay), "RELAYFLOW_LEDGER_DELAY_STEPS": ""}


@pytest.fixture(scope="module")
async def rabbits() -> AsyncIterator[RabbitCluster]:
    async with RabbitCluster() as cluster:
        yield cluster
    if RECOVERIES:
        print("\nrecovery (s) per fault kind: reconnected / first new workflow completed")
        for fault in dict.fromkeys(r.fault for r in RECOVERIES):
            rows = [r for r in RECOVERIES if r.fault == fault]
            if rows:
                reconnected = [r.reconnected for r in rows]
                completed = [r.first_completed for r in rows]
                print(
                    f"  {fault:5} n={len(rows):2}  reconnected max {max(reconnected):5.1f}"
                    f" median {statistics.median(reconnected):5.1f}"
                    f"  completed max {max(completed):5.1f}"
                    f" median {statistics.median(completed):5.1f}"
                )


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return ledger_env(0.3)


@pytest.fixture
async def system(
    rabbits: RabbitCluster,
    private_postgres: PrivatePostgres,
    cluster_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Cluster]:
    await rabbits.heal()
    env = {"RELAYFLOW_AMQP_HEARTBEAT": HEARTBEAT, **cluster_env}
    async with running_cluster(
        rabbits.nodes[0],
        private_postgres,
        tmp_path_factory.mktemp("logs"),
        extra_env=env,
        brokers=rabbits.nodes,
    ) as cluster:
        await assert_fully_replicated(rabbits, cluster)
        yield cluster
    await rabbits.heal()


async def assert_fully_replicated(rabbits: RabbitCluster, cluster: Cluster) -> None:
    """Every quorum queue of the run has a member on each node, all online: one declared with
    fewer (while the cluster was still forming, or by a racing declarer) would stop taking
    messages when a node holding a majority of its few members is lost."""
    everyone = {node.node for node in rabbits.nodes}
    ours = [q for q in await rabbits.queues() if str(q["name"]).startswith(cluster.namespace)]
    quorum = [q for q in ours if q["type"] == "quorum"]
    assert quorum, f"no quorum queue of {cluster.namespace}: {ours}"
    short = {
        str(q["name"]): (q["members"], q["online"])
        for q in quorum
        if set(q["members"]) != everyone or set(q["online"]) != everyone  # type: ignore[call-overload]
    }
    assert not short, f"quorum queues without a member on every node: {short}"


async def connected_node(cluster: Cluster, service: str) -> int:
    async def held() -> tuple[int] | None:
        node = cluster.links[service].connected_node()
        return None if node is None else (node,)  # node 0 is not "not yet"

    (node,) = await wait_for(held, timeout=30, what=f"{service} connected to one node")
    return int(node)


@contextlib.asynccontextmanager
async def fault(
    rabbits: RabbitCluster, cluster: Cluster, kind: str, node: int
) -> AsyncIterator[None]:
    """`node` killed (then started again), hung (SIGSTOP, then SIGCONT) or cut off from every
    service (its proxies black-holed, then passing again) while the body runs."""
    proxies = [links.nodes[node] for links in cluster.links.values()]
    if kind == "kill":
        await rabbits.kill(node)
    elif kind == "hang":
        rabbits.pause(node)
    else:
        for proxy in proxies:
            proxy.blackhole()
    try:
        yield
    finally:
        if kind == "kill":
            await rabbits.restart(node)
        elif kind == "hang":
            rabbits.resume(node)
        else:
            for proxy in proxies:
                proxy.pass_through()


async def assert_drained(cluster: Cluster) -> None:
    """No work message is left in any queue of the run (dead letters included)."""

    async def drained() -> dict[str, tuple[int, int]] | None:
        counts = await cluster.queue_counts()
        left = {name: c for name, c in counts.items() if c[0]}
        return None if left else counts

    await wait_for(drained, timeout=60, interval=0.5, what="every queue drained")


async def submit_until_accepted(cluster: Cluster, client: httpx.AsyncClient, tag: str) -> str:
    """One workflow, retried with its idempotency key until the gateway accepts it."""

    async def accepted() -> str | None:
        return await cluster.submit(client, tag)

    workflow_id: str = await wait_for(accepted, timeout=90, interval=0.2, what="a 202")
    return workflow_id


@pytest.mark.parametrize(("service", "fault_kind"), CASES)
async def test_node_fault_under_a_service(
    system: Cluster,
    rabbits: RabbitCluster,
    client: httpx.AsyncClient,
    service: str,
    fault_kind: str,
) -> None:
    """Mid-workflow, the node `service` is connected to is killed, hung or cut off: the service
    reconnects to another node, and every workflow — those in flight and those started during
    the fault — completes with each step's effect committed once; every queue drains."""
    ids = await system.submit_many(client, 12, f"{service}-{fault_kind}")
    assert len(ids) == 12
    await system.wait_in_flight(least=1)
    node = await connected_node(system, service)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with fault(rabbits, system, fault_kind, node):
        links = system.links[service]

        async def moved() -> bool:
            return any(p.open_connections for i, p in enumerate(links.nodes) if i != node)

        await wait_for(moved, timeout=60, interval=0.1, what=f"{service} on another node")
        reconnected = loop.time() - started
        try:
            late = await submit_until_accepted(system, client, f"late-{uuid.uuid4().hex[:8]}")
        except AssertionError as exc:
            queues = await rabbits.queues(via=(node + 1) % len(rabbits.nodes))
            raise AssertionError(
                f"{exc}; queues: {queues}\ngateway:\n{system.logs('gateway')[-3000:]}"
            ) from None
        await system.wait_terminal([late], timeout=120)
        first_completed = loop.time() - started
        ids.append(late)
        ids += await system.submit_many(client, 4, f"during-{service}-{fault_kind}")
    RECOVERIES.append(Recovery(service, fault_kind, reconnected, first_completed))
    print(
        f"\n{service} {fault_kind}: reconnected after {reconnected:.1f}s, "
        f"a new workflow completed after {first_completed:.1f}s"
    )
    await system.assert_exactly_once(ids, timeout=180)
    await assert_drained(system)


async def test_every_node_down_the_gateway_answers_503_then_recovers_by_itself(
    system: Cluster, rabbits: RabbitCluster, client: httpx.AsyncClient
) -> None:
    """With every broker node down, a start is answered 503 with Retry-After — never a 202
    for a workflow nobody will run; once the nodes are back, the gateway accepts again without
    a restart, and every workflow accepted before or after completes once.

    The nodes are stopped, one after another, not killed: SIGKILL of all three at once, then
    starting them together, once left a step queue answering INTERNAL_ERROR and its binding
    gone (NO_ROUTE) minutes later, in one run of five — RabbitMQ's own recovery, not ours."""
    ids = await system.submit_many(client, 6, "all-down-before")
    assert len(ids) == 6
    for node in rabbits.nodes:
        await node.shut_down()
    answers = []
    for i in range(4):
        response = await client.post(
            f"{system.base_url}/workflows/{WORKFLOW_NAME}",
            json={"tag": f"all-down-{i}"},
            headers={"Idempotency-Key": f"all-down-{i}-{uuid.uuid4().hex[:6]}"},
            timeout=30,
        )
        answers.append((response.status_code, response.headers.get("retry-after")))
    assert answers == [(503, "1")] * 4, answers
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(node.launch(wait=False) for node in rabbits.nodes))
    late = await submit_until_accepted(system, client, f"all-down-after-{uuid.uuid4().hex[:6]}")
    accepted_after = loop.time() - started
    print(f"\nevery node down: a start was accepted {accepted_after:.1f}s after they were started")
    RECOVERIES.append(Recovery("gateway", "all-down", accepted_after, accepted_after))
    await rabbits.wait_formed()
    await system.assert_exactly_once([*ids, late], timeout=180)
    await assert_drained(system)
