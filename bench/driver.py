"""The closed loop every system is driven by, and the interface each system offers the harness."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Protocol

from bench.measure import CpuMeter, Phase, Sample

RunOne = Callable[[int], Awaitable[Sample]]


class System(Protocol):
    """A system under test: started once per repetition, then driven phase by phase."""

    name: str

    async def start(self) -> None: ...

    async def run(self, steps: int, n: int, concurrency: int) -> Phase: ...

    def memory(self) -> dict[str, float | None]:
        """Peak resident memory (MiB) of each process of the system, by role."""
        ...

    async def stop(self) -> None: ...


async def closed_loop(
    steps: int,
    n: int,
    concurrency: int,
    one: RunOne,
    *,
    max_errors: int = 20,
    roles: dict[int, str] | None = None,
) -> Phase:
    """Run `n` workflows with `concurrency` in flight: each worker starts the next as soon as its
    previous one completes. `roles` (pid -> name) splits the phase's CPU by process. Stops early
    after `max_errors` failures (a broken system must not keep the bench running for its whole
    timeout budget)."""
    counter = itertools.count()
    samples: list[Sample] = []
    errors = 0
    failed = asyncio.Event()
    first_error: list[BaseException] = []

    async def worker() -> None:
        nonlocal errors
        while not failed.is_set() and (i := next(counter)) < n:
            try:
                samples.append(await one(i))
            except Exception as exc:  # any failure of one workflow is counted, not fatal
                errors += 1
                if not first_error:
                    first_error.append(exc)
                if errors >= max_errors:
                    failed.set()

    loop = asyncio.get_running_loop()
    meter, t0 = CpuMeter(roles), loop.time()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    wall = loop.time() - t0
    cpu, by_role = meter.read()
    if first_error:
        print(f"  ! {errors} workflow(s) failed; first: {first_error[0]!r}")
    return Phase(steps, n, concurrency, wall, cpu, samples, errors, by_role)
