"""HTTP accept latency at a fixed arrival rate (issue 12): an open loop, not a closed one.

A closed loop with 50 in flight saturates the cores and measures the queue it builds itself; a
user's form submission arrives when it arrives. Here `POST /workflows/bench5` requests are sent
on a schedule fixed in advance, whatever the earlier ones are doing: Poisson arrivals (gaps
drawn from an exponential distribution, seeded, so runs repeat) or evenly spaced ones, at
`rate` per second for `seconds`. By default the rate is half of our maximum throughput, the
workflows/s of the same run's loaded phase (or, when that phase did not run, of a closed-loop
phase on these same processes just before). Each request takes a free keep-alive connection
(a new one if none is free, so that no request waits for another's), and, as a browser would,
opens the workflow's SSE stream after its 202 and reads it until the workflow ends.

Measured: the 202's latency from the request's send (p50, p99, max), and every accepted
workflow's end (completed, failed, never ended). That the client is not the bottleneck is
checked, not assumed: how late each request left against its schedule (p50, p99), the rate
achieved against the schedule's (and the requested one: a Poisson schedule differs from it by
chance, about 1/sqrt(arrivals)), and the bench process's own CPU (share of one core).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from bench.http import Connection, HttpError, Response
from bench.measure import CpuMeter, percentile
from bench.ours import HOST, Relayflow

Arrivals = Literal["poisson", "even"]
WORKFLOW = "bench5"
# The client counts as the bottleneck when its process uses more than this share of one core,
# when the achieved rate is off the schedule's by more than RATE_TOLERANCE, or when requests
# leave later than LAG_BOUND_MS behind their schedule at p99.
CLIENT_CPU_BOUND = 0.5
RATE_TOLERANCE = 0.05
LAG_BOUND_MS = 5.0


class OpenLoop(TypedDict):
    arrivals: Arrivals
    rate_source: str  # where the rate came from
    requested_rate: float  # /s
    scheduled_rate: float  # the schedule's own (Poisson: off the requested by chance), /s
    seconds: float
    scheduled: int
    sent: int
    achieved_rate: float  # requests sent per second, over the sending window
    accepted: int  # 202s
    refused: int  # any other answer, or no answer
    completed: int
    failed: int  # ended otherwise, or never ended within the timeout
    accept_p50_ms: float
    accept_p99_ms: float
    accept_max_ms: float
    e2e_p50_ms: float  # request sent -> workflow.completed read
    e2e_p99_ms: float
    lag_p50_ms: float  # how late a request left against its schedule
    lag_p99_ms: float
    connections: int  # keep-alive connections the client needed
    client_cpu_share: float  # the bench process's CPU ÷ wall time (1.0 = one core)
    cpu_ms_per_wf_by_role: dict[str, float]
    client_ok: bool
    client_notes: list[str]
    load: tuple[float, float, float]


def schedule(rate: float, seconds: float, arrivals: Arrivals, seed: int = 12) -> list[float]:
    """Send times (s from the start) of the arrivals within `seconds` at `rate` per second."""
    if rate <= 0 or seconds <= 0:
        return []
    if arrivals == "even":
        return [i / rate for i in range(int(rate * seconds))]
    draw = random.Random(seed)
    times: list[float] = []
    t = 0.0
    while (t := t + draw.expovariate(rate)) < seconds:
        times.append(t)
    return times


@dataclass
class _Arrivals:
    """What the open loop records of each arrival, in loop seconds."""

    system: Relayflow
    completion_timeout: float
    free: list[Connection] = field(default_factory=list)
    opened: int = 0
    accepts: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    sends: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    refused: int = 0
    completed: int = 0
    failed: int = 0
    first_error: BaseException | None = None

    async def one(self, i: int, due: float) -> None:
        """Send arrival `i` (due at loop time `due`), then follow its workflow to its end."""
        loop = asyncio.get_running_loop()
        if self.free:
            connection = self.free.pop()
        else:
            connection, self.opened = Connection(HOST, self.system.port), self.opened + 1
        sent = loop.time()
        self.lags.append(sent - due)
        self.sends.append(sent)
        try:
            response = await connection.post_json(f"/workflows/{WORKFLOW}", {"n": i})
            took = loop.time() - sent
            workflow_id = _accepted(response)
        except Exception as exc:  # a refused start is counted, not fatal
            self.refused += 1
            self.first_error = self.first_error or exc
            return
        finally:
            self.free.append(connection)
        self.accepts.append(took)
        try:
            await self.system.completion(workflow_id, timeout=self.completion_timeout)
        except Exception as exc:  # an accepted workflow that did not complete is a failure
            self.failed += 1
            self.first_error = self.first_error or exc
            return
        self.completed += 1
        self.e2e.append(loop.time() - sent)

    def client_notes(self, client_cpu: float, planned: float) -> list[str]:
        """Why the client may have been the bottleneck; empty when it kept up."""
        notes = []
        achieved, lag_p99 = _rate(self.sends), percentile(self.lags, 99) * 1000
        if client_cpu > CLIENT_CPU_BOUND:
            notes.append(f"client CPU {client_cpu:.0%} of a core > {CLIENT_CPU_BOUND:.0%}")
        if not abs(achieved - planned) <= RATE_TOLERANCE * planned:
            notes.append(f"achieved {achieved:.1f}/s against the schedule's {planned:.1f}/s")
        if not lag_p99 <= LAG_BOUND_MS:
            why = "" if client_cpu > CLIENT_CPU_BOUND else " (waiting for a core, not busy)"
            notes.append(f"requests left {lag_p99:.1f} ms behind schedule at p99{why}")
        return notes


def _accepted(response: Response) -> str:
    if response.status != 202:
        raise HttpError(f"submit answered {response.status}: {response.body[:200]!r}")
    return response.text_field("workflowId")


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 2)


async def open_loop(
    system: Relayflow,
    *,
    rate: float,
    seconds: float,
    arrivals: Arrivals = "poisson",
    rate_source: str = "--rate",
    completion_timeout: float = 60.0,
) -> OpenLoop:
    """Drive the started `system` on the schedule and wait for every accepted workflow's end."""
    loop = asyncio.get_running_loop()
    offsets = schedule(rate, seconds, arrivals)
    run = _Arrivals(system, completion_timeout)
    meter = CpuMeter({pid: role for role, pid in system.pids().items()})
    cpu0, t0 = time.process_time(), loop.time()
    tasks: list[asyncio.Task[None]] = []
    for i, offset in enumerate(offsets):
        due = t0 + offset
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(run.one(i, due)))
    await asyncio.gather(*tasks)
    wall = loop.time() - t0
    client_cpu = (time.process_time() - cpu0) / wall if wall > 0 else float("nan")
    _, by_role = meter.read()
    for connection in run.free:
        await connection.close()
    if run.first_error is not None:
        print(f"  ! open loop: {run.refused} refused, {run.failed} failed; "
              f"first: {run.first_error!r}")  # fmt: skip
    planned = _rate(offsets)
    notes = run.client_notes(client_cpu, planned)
    done = max(1, run.completed)
    return OpenLoop(
        arrivals=arrivals,
        rate_source=rate_source,
        requested_rate=round(rate, 2),
        scheduled_rate=round(planned, 2),
        seconds=seconds,
        scheduled=len(offsets),
        sent=len(run.sends),
        achieved_rate=round(_rate(run.sends), 2),
        accepted=len(run.accepts),
        refused=run.refused,
        completed=run.completed,
        failed=run.failed,
        accept_p50_ms=_ms(run.accepts, 50),
        accept_p99_ms=_ms(run.accepts, 99),
        accept_max_ms=_ms(run.accepts, 100),
        e2e_p50_ms=_ms(run.e2e, 50),
        e2e_p99_ms=_ms(run.e2e, 99),
        lag_p50_ms=_ms(run.lags, 50),
        lag_p99_ms=_ms(run.lags, 99),
        connections=run.opened,
        client_cpu_share=round(client_cpu, 3),
        cpu_ms_per_wf_by_role={
            role: round(spent / done, 2)
            for role, spent in sorted(by_role.items(), key=lambda item: -item[1])
        },
        client_ok=not notes,
        client_notes=notes,
        load=os.getloadavg(),
    )


def _rate(times: list[float]) -> float:
    """Events per second between the first and the last of `times`."""
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else float("nan")


async def run_open_loop(
    system: Relayflow,
    *,
    rate: float | None,
    rate_source: str,
    seconds: float,
    arrivals: Arrivals,
    warmup: int,
    calibrate_n: int,
    concurrency: int,
) -> OpenLoop:
    """Start `system`, warm it up, find the rate when none is given (half the workflows/s of a
    closed loop of `calibrate_n` at `concurrency` in flight on it), run the open loop, stop."""
    try:
        await system.start()
        if warmup:
            await system.run(5, warmup, min(concurrency, 10))
        if rate is None:
            calibration = await system.run(5, calibrate_n, concurrency)
            rate = calibration.throughput / 2
            rate_source = (
                f"half of {calibration.throughput:.1f}/s, a closed loop of {calibrate_n} at "
                f"{concurrency} in flight on these processes"
            )
        return await open_loop(
            system, rate=rate, seconds=seconds, arrivals=arrivals, rate_source=rate_source
        )
    finally:
        await system.stop()
