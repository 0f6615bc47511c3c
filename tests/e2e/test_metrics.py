"""Prometheus metrics from the real services as processes: a workflow run through the system
shows up in the gateway's `/metrics` and on the metrics ports of the orchestrator and the step
service (`RELAYFLOW_METRICS_PORT`), as an operator's scrape would see it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relayflow.contracts import StartWorkflow, encode, new_message_id, workflow_id_for_key
from relayflow.testing_system import free_port
from relayflow.topology import RESULT_KEY, START_KEY, Topology
from relayflow.workflow import WorkflowRegistry
from tests.e2e.conftest import System, running_system
from tests.e2e.test_system import form, wait_completed
from tests.support import wait_for

pytestmark = pytest.mark.e2e

SCRAPED = ("orchestrator", "steps", "external")


@dataclass(frozen=True)
class Scrape:
    """One scrape of several endpoints: each sample's value by endpoint."""

    texts: Mapping[str, str]

    def value(self, where: str, name: str, **labels: str) -> float:
        """The sample `name` with exactly `labels` at `where`; 0 when absent (a labelled
        counter appears only once counted)."""
        for family in text_string_to_metric_families(self.texts[where]):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def total(
        self, name: str, labels: Mapping[str, str], *, among: tuple[str, ...] = SCRAPED
    ) -> float:
        """Summed over services: with step services advancing workflows
        (RELAYFLOW_STEP_ADVANCE), a workflow's last transition may happen in either."""
        return sum(self.value(where, name, **labels) for where in among)


@dataclass(frozen=True)
class Metered:
    system: System
    urls: Mapping[str, str]

    async def scrape(self, client: httpx.AsyncClient) -> Scrape:
        texts = {}
        for name, url in self.urls.items():
            response = await client.get(url)
            assert response.status_code == 200, (name, response.text)
            assert response.headers["content-type"].startswith("text/plain")
            texts[name] = response.text
        return Scrape(texts)


@pytest.fixture(scope="module")
async def metered(
    amqp_url: str,
    database_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Metered]:
    ports = {name: free_port() for name in SCRAPED}
    async with running_system(
        prefix="metrics",
        amqp_url=amqp_url,
        database_url=database_url,
        amqp_connection=amqp_connection,
        registry=registry,
        log_dir=Path(tmp_path_factory.mktemp("logs")),
        env={"RELAYFLOW_OUTBOX_GAUGE_INTERVAL": "0.2"},
        service_env={name: {"RELAYFLOW_METRICS_PORT": str(port)} for name, port in ports.items()},
    ) as system:
        urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
        yield Metered(system, {"gateway": f"{system.base_url}/metrics", **urls})


async def test_a_completed_workflow_is_counted_where_an_operator_scrapes(
    metered: Metered,
) -> None:
    """The first thing an operator graphs: workflows started and finished, steps finished and
    how long they took, HTTP requests by route template — counted after the commit, by the
    process that applied each transition."""
    base_url = metered.system.base_url
    async with httpx.AsyncClient(timeout=10) as client:
        before = await metered.scrape(client)
        response = await client.post(f"{base_url}/submit", json=form("metrics"))
        assert response.status_code == 202
        workflow_id = response.json()["workflowId"]
        state = await wait_completed(client, base_url, workflow_id)
        assert state["status"] == "completed"

        async def counted() -> Scrape | None:
            after = await metered.scrape(client)
            finished = "relayflow_workflows_finished_total"
            labels = {"workflow": "formSubmission", "status": "completed"}
            if after.total(finished, labels) > before.total(finished, labels):
                return after
            return None

        after: Scrape = await wait_for(counted, timeout=20, interval=0.1, what="finished counted")

    def grew(name: str, **labels: str) -> bool:
        return after.total(name, labels) > before.total(name, labels)

    assert after.value(
        "orchestrator", "relayflow_workflows_started_total", workflow="formSubmission"
    ) > before.value("orchestrator", "relayflow_workflows_started_total", workflow="formSubmission")
    assert grew(
        "relayflow_workflow_duration_seconds_count", workflow="formSubmission", status="completed"
    )
    assert grew("relayflow_steps_finished_total", step="finalize", outcome="completed")
    assert grew("relayflow_step_duration_seconds_count", step="finalize")
    # The route's template, never the workflow's id.
    requests = "relayflow_http_request_duration_seconds_count"
    submitted = {"method": "POST", "route": "/submit", "status": "202"}
    read = {"method": "GET", "route": "/workflows/{name_or_id}", "status": "200"}
    assert after.value("gateway", requests, **submitted) > before.value(
        "gateway", requests, **submitted
    )
    assert after.value("gateway", requests, **read) > 0
    assert workflow_id not in after.texts["gateway"]
    # The outbox gauges are read by the orchestrator; the external system serves its port too.
    assert "relayflow_outbox_pending" in after.texts["orchestrator"]
    assert "relayflow_outbox_oldest_seconds" in after.texts["orchestrator"]
    assert "process_cpu_seconds_total" in after.texts["external"]


async def test_duplicates_and_dead_letters_are_counted(
    metered: Metered, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    """A redelivered start is absorbed by the inbox and a garbage message dead-lettered: both
    invisible to the workflow, so the counters are how an operator learns they happen — with
    the reason as a short category, not its free text."""
    key = f"metrics-{uuid.uuid4()}"
    start = StartWorkflow(
        message_id=new_message_id(),
        workflow_id=workflow_id_for_key("formSubmission", key),
        idempotency_key=key,
        workflow_name="formSubmission",
        input=form("twice"),
    )
    orchestrator = ("orchestrator",)
    async with httpx.AsyncClient(timeout=10) as client:
        before = await metered.scrape(client)
        channel = await amqp_connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(
            Topology(metered.system.namespace).exchange, ensure=False
        )
        for body, routing_key in ((encode(start), START_KEY),) * 2 + ((b"{no", RESULT_KEY),):
            await exchange.publish(
                aio_pika.Message(
                    body, message_id=new_message_id(), content_type="application/json"
                ),
                routing_key=routing_key,
            )
        await channel.close()

        async def counted() -> Scrape | None:
            after = await metered.scrape(client)
            duplicates = "relayflow_inbox_duplicates_total"
            dead = "relayflow_dead_letters_total"
            labels = {"queue": RESULT_KEY, "reason": "invalid"}
            if after.total(duplicates, {}, among=orchestrator) > before.total(
                duplicates, {}, among=orchestrator
            ) and after.total(dead, labels, among=orchestrator) > before.total(
                dead, labels, among=orchestrator
            ):
                return after
            return None

        await wait_for(counted, timeout=20, interval=0.1, what="duplicate and dead letter counted")
        state = await wait_completed(client, metered.system.base_url, start.workflow_id)
    assert state["status"] == "completed"


async def test_every_service_answers_its_probes_beside_its_metrics(metered: Metered) -> None:
    """Kubernetes probes the services' metrics ports (deploy/k8s): each real process must say
    it is live and, once consuming, ready — with the database, broker and consumer it checked."""
    parts = {
        "orchestrator": {"database": True, "broker": True, "consumer": True},
        "steps": {"database": True, "broker": True, "consumer": True},
        "external": {"broker": True, "consumer": True},
    }
    async with httpx.AsyncClient(timeout=10) as client:
        for name, url in metered.urls.items():
            if name == "gateway":
                continue
            base = url.removesuffix("/metrics")
            live = await client.get(f"{base}/livez")
            assert (live.status_code, live.json()) == (200, {"status": "ok"}), name

            async def ready(base: str = base) -> httpx.Response | None:
                response = await client.get(f"{base}/readyz")
                return response if response.status_code == 200 else None

            answer: httpx.Response = await wait_for(ready, what=f"{name} ready")
            assert answer.json() == {"status": "ready", **parts[name]}, name


async def test_open_event_streams_are_gauged(metered: Metered) -> None:
    """An operator sizing gateways needs to know how many SSE streams each holds: the gauge
    counts a stream while it is open and lets it go when the client leaves."""
    base_url = metered.system.base_url
    gauge = "relayflow_sse_clients"
    gateway = ("gateway",)
    async with httpx.AsyncClient(timeout=10) as client:
        before = (await metered.scrape(client)).total(gauge, {}, among=gateway)
        async with (
            httpx.AsyncClient(timeout=10) as streaming,
            streaming.stream("GET", f"{base_url}/events") as stream,
        ):
            assert stream.status_code == 200
            await anext(stream.aiter_bytes())  # the stream is open: its first chunk came

            async def opened() -> bool:
                return (await metered.scrape(client)).total(gauge, {}, among=gateway) == before + 1

            await wait_for(opened, timeout=10, interval=0.05, what="the stream gauged")

        async def closed() -> bool:
            return (await metered.scrape(client)).total(gauge, {}, among=gateway) == before

        await wait_for(closed, timeout=10, interval=0.05, what="the stream let go")


async def test_the_orchestrator_gauges_timers_due(metered: Metered) -> None:
    """The timers gauge is read by the orchestrator with the outbox's, from the database."""
    async with httpx.AsyncClient(timeout=10) as client:
        scrape = await metered.scrape(client)
    assert "relayflow_timers_due" in scrape.texts["orchestrator"]
