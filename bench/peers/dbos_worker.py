"""A DBOS Transact process for the bench: `python -m bench.peers.dbos_worker SYSTEM_DB_URL QUEUE`.

It defines the five-step shape as `@DBOS.step`s inside one `@DBOS.workflow` (the number of steps
is the workflow's argument), launches DBOS and listens on a DBOS queue. It then reads commands on
stdin, one per line, and answers on stdout:

- `RUN <steps> <n> <concurrency>`: run `n` workflows directly in this process (the way a DBOS app
  calls a workflow from its request handler), `concurrency` at once, and print
  `RESULT {"latencies": [...], "wall": s, "errors": k}`;
- `QUIT` (or end of input): shut DBOS down and exit.

Queued workflows (enqueued by a DBOSClient in the harness) run whenever they arrive.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from dbos import DBOS, DBOSConfig

WORKFLOW_NAME = "bench_chain"


@DBOS.step()
def bench_step(n: int, index: int) -> int:
    return n + index


@DBOS.workflow(name=WORKFLOW_NAME)
def bench_chain(steps: int, n: int) -> int:
    value = n
    for index in range(steps):
        value = bench_step(value, index)
    return value


def run_direct(steps: int, n: int, concurrency: int) -> dict[str, object]:
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0

    def worker() -> None:
        nonlocal errors
        while (i := next(counter)) < n:
            t0 = time.perf_counter()
            try:
                bench_chain(steps, i)
            except Exception as exc:  # counted; the first few are shown on stderr
                with lock:
                    errors += 1
                    if errors <= 3:
                        print(f"dbos workflow failed: {exc!r}", file=sys.stderr)
                continue
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(min(n, concurrency))]:
            future.result()
    return {"latencies": latencies, "wall": time.perf_counter() - t0, "errors": errors}


def main() -> None:
    database_url, queue_name = sys.argv[1], sys.argv[2]
    poll = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
    config: DBOSConfig = {
        "name": "relayflow-bench",
        "system_database_url": database_url,
        "sys_db_pool_size": 40,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(queue_name, polling_interval_sec=poll, on_conflict="always_update")
    print("READY", flush=True)
    try:
        for line in sys.stdin:
            parts = line.split()
            if not parts or parts[0] == "QUIT":
                break
            if parts[0] == "RUN":
                steps, n, concurrency = (int(v) for v in parts[1:4])
                print("RESULT " + json.dumps(run_direct(steps, n, concurrency)), flush=True)
    finally:
        DBOS.destroy(destroy_registry=True)


if __name__ == "__main__":
    main()
