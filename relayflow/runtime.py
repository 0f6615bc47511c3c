"""What every service process does the same way: logging, start-up of the database, and a
graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import asyncpg

from relayflow import logs, tracing
from relayflow.auth import AuthSettings
from relayflow.db import create_pool, ensure_database, migrate
from relayflow.db.migrate import CORE
from relayflow.db.pool import ENGINE_SESSION
from relayflow.errors import ConfigurationError, DefinitionError, ServiceUnavailableError
from relayflow.logs import url_secrets
from relayflow.metrics import serve_metrics, switch
from relayflow.probes import Probes
from relayflow.settings import Settings

log = logging.getLogger(__name__)


def configure_logging(service: str, settings: Settings) -> None:
    """Logging as `settings` say (`relayflow.logs`), redacting the passwords of its URLs and the
    server secret of the API keys wherever they would appear."""
    secrets = url_secrets(settings.amqp_url, settings.database_url)
    auth_secret = AuthSettings().secret
    if auth_secret is not None:
        secrets.append(auth_secret.get_secret_value())
    logs.configure(service, settings.log_level, settings.log_format, secrets=secrets)


async def prepare_database(
    settings: Settings, applications: Sequence[str] = (), *, engine: bool = False
) -> asyncpg.Pool[Any]:
    """Create the database if missing, apply the core's migrations and those of the
    `applications` (packages with a `migrations` folder), and open the pool. `engine`: the pool
    runs the engine's own statements only (`relayflow.db.pool.ENGINE_SESSION`)."""
    try:
        await ensure_database(settings.database_url)
    except (OSError, asyncpg.CannotConnectNowError) as exc:
        # create_pool below waits and explains; creating needs the server anyway.
        log.debug("could not check the database yet: %s", exc)
    pool = await create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        session=ENGINE_SESSION if engine else None,
    )
    async with pool.acquire() as conn:
        await migrate(conn, (CORE, *applications))
    return pool


ServiceMain = Callable[[asyncio.Event], Awaitable[None]]

# A collection of the youngest generation starts when allocations minus deallocations pass the
# first threshold; what reference counting frees promptly (nearly all of ours) does not add up.
_GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Keep the cyclic garbage collector from pausing the event loop for tens of milliseconds.

    Measured under load (bench, 50 workflows in flight), its full collections took 15 to 55 ms in
    every service — most of it re-scanning what importing left behind (modules, functions,
    pydantic schemas), which lives as long as the process — and the gateway's middle-generation
    ones 5 to 11 ms, many times a second. Each pause stalls every request and delivery in the
    process at once. Freezing takes everything alive at start-up out of the collector's sight;
    with it, no pause over 5 ms remained under load, and the HTTP accept p99 fell by about a
    tenth."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where it is installed: its C transports make each of the many small socket writes
    (AMQP frames, PostgreSQL messages, SSE chunks) much cheaper than asyncio's own."""
    try:
        import uvloop  # noqa: PLC0415 - optional: plain asyncio where it is missing
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def run(
    service: str,
    main: ServiceMain,
    *,
    settings: Settings,
    metrics: tuple[str, int] | None = None,
    probes: Probes | None = None,
) -> None:
    """Run `main(stop)` until it returns; SIGTERM and SIGINT set `stop`, and `main` is expected to
    stop consuming, finish or hand back in-flight work, and return. Exit code 0 on a clean stop,
    2 when the broker or database cannot be reached or the configuration is wrong. `metrics`:
    (host, port) to serve Prometheus metrics on first (port 0: not served); with `probes`, the
    same port also answers /livez and /readyz (`relayflow.probes`), which are served even when
    `settings.metrics_enabled` is False (RELAYFLOW_METRICS_ENABLED: count nothing)."""
    configure_logging(service, settings)
    tracing.configure(service)
    switch(on=settings.metrics_enabled)
    if metrics is not None and (settings.metrics_enabled or probes is not None):
        try:
            if probes is None:
                serve_metrics(metrics[1], metrics[0])
            elif metrics[1]:
                probes.serve(*metrics)
        except OSError as exc:
            logging.getLogger(service).error(  # noqa: TRY400 - the reason is the message
                "cannot serve metrics on %s:%d (RELAYFLOW_METRICS_PORT): %s", *metrics, exc
            )
            sys.exit(2)

    async def _amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if probes is not None:
            probes.bind(loop, stop)
        tune_gc()
        await main(stop)

    try:
        _run_loop(_amain())
    except (ServiceUnavailableError, ConfigurationError, DefinitionError) as exc:
        # The message says what is missing and how to start it, or which module or definition
        # is wrong; a traceback would bury that.
        logging.getLogger(service).error("%s", exc)  # noqa: TRY400
        sys.exit(2)
    finally:
        tracing.shutdown()  # what spans are buffered go out before the process ends
    logging.getLogger(service).info("stopped")
