"""Fan-out: many SSE subscribers of one workflow on one gateway. Every subscriber attaches before
the workflow is submitted; then we measure the gateway's resident memory per subscriber and how
long each event takes to reach all of them.

An event's arrival is the kernel's receive timestamp on the subscriber's socket
(`bench.fanclient`): the spread is the gateway's. The time this process read it is reported too
(`read_spread_ms`), which is how far one Python reader of all the streams lags behind them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench.fanclient import Arrival, Subscriber
from bench.http import Connection, HttpError
from bench.infra import unique
from bench.measure import percentile, status_kib
from bench.ours import HOST, TERMINAL, Relayflow
from relayflow.contracts import workflow_id_for_key

WORKFLOW = "benchfan"
OPEN_AT_ONCE = 100
COMPLETED = "workflow.completed"


async def fanout(system: Relayflow, subscribers: int) -> dict[str, Any]:
    key = unique("fan-")
    workflow_id = workflow_id_for_key(WORKFLOW, key)
    gateway_pid = system.pids()["gateway"]
    loop = asyncio.get_running_loop()
    rss_before = status_kib(gateway_pid, "VmRSS") or 0
    streams = [
        Subscriber(HOST, system.port, f"/workflows/{workflow_id}/events", TERMINAL)
        for _ in range(subscribers)
    ]
    limit = asyncio.Semaphore(OPEN_AT_ONCE)

    async def open_one(stream: Subscriber) -> None:
        async with limit:
            await stream.open()

    t_open = loop.time()
    try:
        await asyncio.gather(*(open_one(stream) for stream in streams))
        opened = loop.time() - t_open
        await asyncio.sleep(1.0)  # let the gateway settle the subscriptions
        rss_attached = status_kib(gateway_pid, "VmRSS") or 0
        connection = Connection(HOST, system.port)
        t_submit = time.time()
        response = await connection.post_json(
            f"/workflows/{WORKFLOW}", {"sleep": 0.2}, headers={"Idempotency-Key": key}
        )
        await connection.close()
        if response.status != 202:
            raise HttpError(f"fan-out submit answered {response.status}")
        async with asyncio.timeout(120):
            results = await asyncio.gather(
                *(stream.done for stream in streams), return_exceptions=True
            )
    finally:
        for stream in streams:
            stream.close()
    arrivals = [stream.arrivals for stream in streams]
    failed = sum(1 for r in results if r != COMPLETED)
    done = [a[COMPLETED].kernel for a in arrivals if COMPLETED in a]
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
        "delivery_spread_ms": _lags(arrivals, lambda a: a.kernel, 100),
        # Half of the subscribers had it this long after the first one.
        "delivery_lag_p50_ms": _lags(arrivals, lambda a: a.kernel, 50),
        # The same spread as this process read the streams: the reader's lag on top.
        "read_spread_ms": _lags(arrivals, lambda a: a.read, 100),
    }


def _lags(
    arrivals: list[dict[str, Arrival]], when: Callable[[Arrival], float], q: float
) -> dict[str, float]:
    """Per event, the q-th percentile of each subscriber's arrival after the first one's."""
    lags = {}
    for event in sorted({e for a in arrivals for e in a}):
        times = [when(a[event]) for a in arrivals if event in a]
        first = min(times)
        lags[event] = round(percentile([t - first for t in times], q) * 1000, 2)
    return lags
