"""The Celery peer's app: `celery -A bench.peers.celery_app worker …`, configured from the
environment by the harness (`BENCH_CELERY_BROKER`, `BENCH_CELERY_BACKEND`, `BENCH_CELERY_QUEUE`).

A workflow is a chain of `bench_step` tasks: the seed's five steps, each a trivial body.
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
        broker_pool_limit=None,
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
