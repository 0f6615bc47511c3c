"""The Celery peer's app: `celery -A bench.peers.celery_app worker …`, configured from the
environment by the harness (`BENCH_CELERY_BROKER`, `BENCH_CELERY_BACKEND`, `BENCH_CELERY_QUEUE`).

A workflow is a chain of `bench_step` tasks: the seed's five steps, each a trivial body.

Run as Celery's users run it: Celery's defaults, but for these (and why):
- `task_default_queue` / `_exchange` / `_routing_key`, `event_exchange`, `control_exchange`:
  names of our own, so that runs on the shared broker do not meet (no effect on speed).
- `worker_enable_remote_control=False` (default True) and the worker's `--without-gossip
  --without-mingle --without-heartbeat`: no pidbox queue or broadcasts per worker, the set-up
  Celery's own docs advise for workers nobody inspects remotely; it saves Celery a little work.
- `result_expires=None` (default one day): no clean-up task is scheduled; nothing runs a day.
- `worker_hijack_root_logger=False`: logging only.
- `broker_connection_retry_on_startup=True`: the default's own future value (no effect here).
Left at its default on purpose: `broker_pool_limit` (10). Setting it to None, as this file did
until issue 12, disables the producer connection pool — a new AMQP connection per publish —
and made Celery look three times as costly on the broker as it is.
"""

from __future__ import annotations

import os

from celery import Celery


def make_app(broker: str, backend: str, queue: str) -> Celery:
    app = Celery("bench", broker=broker, backend=backend)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        event_exchange=f"{queue}.ev",
        control_exchange=f"{queue}.ctl",
        # Our own names on the shared broker: no remote-control / event exchanges.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_extended=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=None,
    )

    @app.task(name="bench_step", shared=False)
    def bench_step(value: int) -> int:
        return value + 1

    return app


app = make_app(
    os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("BENCH_CELERY_BACKEND", "rpc://"),
    os.environ.get("BENCH_CELERY_QUEUE", "bench_celery"),
)
