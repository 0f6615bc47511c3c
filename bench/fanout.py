"""Fan-out: many SSE subscribers of one workflow on one gateway. Every subscriber attaches before
the workflow is submitted; then we measure the gateway's resident memory per subscriber and how
long each event takes to reach all of them."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.http import Connection, EventStream, HttpError
from bench.infra import unique
from bench.measure import percentile, status_kib
from bench.ours import HOST, TERMINAL, Relayflow
from relayflow.contracts import workflow_id_for_key

WORKFLOW = "benchfan"
OPEN_AT_ONCE = 100


async def fanout(system: Relayflow, subscribers: int) -> dict[str, Any]:
    key = unique("fan-")
    workflow_id = workflow_id_for_key(WORKFLOW, key)
    gateway_pid = system.pids()["gateway"]
    loop = asyncio.get_running_loop()
    rss_before = status_kib(gateway_pid, "VmRSS") or 0
    streams = [
        EventStream(HOST, system.port, f"/workflows/{workflow_id}/events")
        for _ in range(subscribers)
    ]
    limit = asyncio.Semaphore(OPEN_AT_ONCE)

    async def open_one(stream: EventStream) -> None:
        async with limit:
            await stream.open()

    t_open = loop.time()
    try:
        await asyncio.gather(*(open_one(stream) for stream in streams))
        opened = loop.time() - t_open
        await asyncio.sleep(1.0)  # let the gateway settle the subscriptions
        rss_attached = status_kib(gateway_pid, "VmRSS") or 0
        arrivals: list[dict[str, float]] = [{} for _ in streams]

        def recorder(index: int) -> Any:
            def record(event: str, at: float) -> None:
                arrivals[index].setdefault(event, at)

            return record

        readers = [
            asyncio.create_task(stream.read_until(TERMINAL, recorder(i), timeout=120))
            for i, stream in enumerate(streams)
        ]
        connection = Connection(HOST, system.port)
        t_submit = loop.time()
        response = await connection.post_json(
            f"/workflows/{WORKFLOW}", {"sleep": 0.2}, headers={"Idempotency-Key": key}
        )
        await connection.close()
        if response.status != 202:
            raise HttpError(f"fan-out submit answered {response.status}")
        results = await asyncio.gather(*readers, return_exceptions=True)
    finally:
        await asyncio.gather(*(stream.close() for stream in streams))
    failed = sum(1 for r in results if r != "workflow.completed")
    done = [a["workflow.completed"] for a in arrivals if "workflow.completed" in a]
    spreads = {}
    for event in sorted({e for a in arrivals for e in a}):
        times = [a[event] for a in arrivals if event in a]
        spreads[event] = round((max(times) - min(times)) * 1000, 2)
    from_submit = [(t - t_submit) * 1000 for t in done]
    rss_delta = max(0, rss_attached - rss_before)
    return {
        "subscribers": subscribers,
        "failed": failed,
        "open_all_s": round(opened, 3),
        "gateway_rss_before_mib": round(rss_before / 1024, 1),
        "gateway_rss_attached_mib": round(rss_attached / 1024, 1),
        "kib_per_subscriber": round(rss_delta / max(1, subscribers), 2),
        "completed_from_submit_p50_ms": round(percentile(from_submit, 50), 2),
        "completed_from_submit_p99_ms": round(percentile(from_submit, 99), 2),
        "completed_from_submit_max_ms": round(max(from_submit, default=float("nan")), 2),
        # First to last subscriber to receive each event: the cost of fanning it out.
        "delivery_spread_ms": spreads,
    }
