"""Helpers for peers whose clients are synchronous (Celery, DBOS's client): a closed loop in
threads, and one poller that finds finished workflows for all threads with one query.

The harness calls these through `asyncio.to_thread`, so its event loop never blocks on them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bench.measure import CpuMeter, Phase, Sample

if TYPE_CHECKING:  # psycopg2 is the bench extra's, imported when a poller starts
    from psycopg2.extensions import connection


def threaded_closed_loop(
    steps: int,
    n: int,
    concurrency: int,
    one: Callable[[int], Sample],
    *,
    max_errors: int = 20,
    roles: dict[int, str] | None = None,
) -> Phase:
    """`bench.driver.closed_loop` in threads; `roles` (pid -> name) splits the CPU by process."""
    counter = itertools.count()
    lock = threading.Lock()
    samples: list[Sample] = []
    errors: list[BaseException] = []
    last_done = [0.0]

    def worker() -> None:
        while len(errors) < max_errors and (i := next(counter)) < n:
            try:
                sample = one(i)
            except Exception as exc:  # counted, not fatal
                with lock:
                    errors.append(exc)
                continue
            with lock:
                samples.append(sample)
                last_done[0] = time.perf_counter()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(n, concurrency))]
    meter, t0 = CpuMeter(roles), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    cpu, by_role = meter.read()
    if errors and samples:
        # A lost workflow holds its thread until its timeout; the rate is that of the others.
        wall = last_done[0] - t0
    if errors:
        print(f"  ! {len(errors)} workflow(s) failed; first: {errors[0]!r}")
    return Phase(steps, n, concurrency, wall, cpu, samples, len(errors), by_role)


class DonePoller:
    """A thread that polls PostgreSQL for which of the awaited ids are finished, every
    `interval` seconds while any is awaited: one indexed query serves every waiting thread,
    which is cheaper for the peer than each thread polling on its own."""

    def __init__(self, dsn: str, query: str, interval: float = 0.002) -> None:
        import psycopg2

        self._connection: connection = psycopg2.connect(dsn)
        self._connection.autocommit = True
        self._query = query
        self._interval = interval
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="done-poller")
        self._thread.start()

    def wait(self, key: str, timeout: float = 60.0) -> None:
        event = threading.Event()
        with self._lock:
            self._waiting[key] = event
        self._wake.set()
        try:
            if not event.wait(timeout):
                raise TimeoutError(f"{key} not finished within {timeout:g}s")
        finally:
            with self._lock:
                self._waiting.pop(key, None)

    def _run(self) -> None:
        with self._connection.cursor() as cursor:
            while not self._stopped:
                with self._lock:
                    keys = list(self._waiting)
                if not keys:
                    self._wake.wait(0.1)
                    self._wake.clear()
                    continue
                cursor.execute(self._query, (keys,))
                done = [row[0] for row in cursor.fetchall()]
                with self._lock:
                    for key in done:
                        event = self._waiting.get(key)
                        if event is not None:
                            event.set()
                time.sleep(self._interval)

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._connection.close()
