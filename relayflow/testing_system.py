"""Test an application on the whole system, as its users will run it: the run command (gateway,
orchestrator and step service, each a process) on a database and a queue namespace of the
test's own, over HTTP. `relayflow.testing` is its in-process counterpart, on a clock you move;
this one shows what only real processes show (delivery, the services' start and stop, what a
package ships).

    async with running_app(["relayflow-run"], app="orders_app", amqp_url=amqp,
                           database_url=db, namespace="orders-t1", cwd=tmp) as app:
        response = httpx.post(f"{app.base_url}/workflows/order", json=...)

The database need not exist (the services create and migrate it); the namespace's queues and
exchanges are the caller's to delete. On leaving, the run command gets SIGTERM and must exit 0
within `stop_within` seconds (else it is killed and `AppFailed` says so, with its log's tail).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from relayflow.errors import RelayflowError

__all__ = ["AppFailed", "RunningApp", "free_port", "running_app"]


class AppFailed(RelayflowError):
    """The run command exited early, was never ready, or did not stop cleanly."""


@dataclass(frozen=True, slots=True)
class RunningApp:
    base_url: str
    # Everything the run command printed.
    log: Path
    env: Mapping[str, str]

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAYFLOW_")}


@contextlib.asynccontextmanager
async def running_app(
    command: Sequence[str | Path],
    *,
    app: str,
    amqp_url: str,
    database_url: str,
    namespace: str,
    cwd: Path,
    base_env: Mapping[str, str] | None = None,
    ready_within: float = 90.0,
    stop_within: float = 30.0,
) -> AsyncIterator[RunningApp]:
    """Run `command --app app` in `cwd` until the block ends; its gateway on a free loopback
    port with authentication off and no metrics ports (another run on the machine may hold
    them). `base_env`: the environment to start from (default: this one without `RELAYFLOW_*`
    settings)."""
    port = free_port()
    env = {
        **(dict(base_env) if base_env is not None else _base_env()),
        "AMQP_URL": amqp_url,
        "DATABASE_URL": database_url,
        "RELAYFLOW_NAMESPACE": namespace,
        "RELAYFLOW_GATEWAY_HOST": "127.0.0.1",
        "RELAYFLOW_GATEWAY_PORT": str(port),
        "RELAYFLOW_AUTH": "off",
        "RELAYFLOW_METRICS_PORT": "0",
        "NO_COLOR": "1",
    }
    log = cwd / "run.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *map(str, command),
            "--app",
            app,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    running = RunningApp(f"http://127.0.0.1:{port}", log, env)
    failed = False
    try:
        await _ready(process, running, ready_within)
        yield running
    except BaseException:
        failed = True
        raise
    finally:
        code = await _stop(process, stop_within)
        if code != 0 and not failed:
            raise AppFailed(f"the run command exited {code} on SIGTERM:\n{running.tail()}")


async def _ready(process: asyncio.subprocess.Process, running: RunningApp, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            if process.returncode is not None:
                raise AppFailed(f"the run command exited {process.returncode}:\n{running.tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{running.base_url}/readyz")).status_code == 200:
                    return
            if loop.time() > deadline:
                raise AppFailed(f"the gateway was not ready within {within:g}s:\n{running.tail()}")
            await asyncio.sleep(0.2)


async def _stop(process: asyncio.subprocess.Process, within: float) -> int | None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            process.kill()
            await process.wait()
            return None
    return process.returncode
