"""Run the whole system in the foreground (`relayflow-run`): one OS process per service, as in
production, with each output line prefixed by the service's name.

Checks first that RabbitMQ and PostgreSQL answer; forwards SIGINT/SIGTERM to every service and
kills the ones that have not stopped after a grace period; if a service dies on its own, stops
the others and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from relayflow.settings import Settings

# The core services, in start order: name shown in the logs -> module run with `python -m`. The
# applications' own processes (`RELAYFLOW_APP_PROCESSES`) start after them.
SERVICES: dict[str, str] = {
    "gateway": "services.gateway",
    "orchestrator": "services.orchestrator",
    "steps": "services.steps",
}
_COLOURS = ("36", "35", "33", "32", "34", "31")
_SELF = "run"

Write = Callable[[str], None]


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _prefixer(names: Sequence[str], *, colour: bool) -> Callable[[str], str]:
    width = max(len(name) for name in [*names, _SELF])
    colours = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(names)}

    def prefix(name: str) -> str:
        label = f"{name:<{width}} |"
        return f"\x1b[{colours.get(name, '1')}m{label}\x1b[0m " if colour else f"{label} "

    return prefix


async def check_services(
    amqp_url: str, database_url: str, *, connect_timeout: float = 5.0
) -> list[str]:
    """What is not answering, each with how to start it (empty when both answer)."""
    problems = []
    try:
        connection = await aio_pika.connect(amqp_url, timeout=connect_timeout)
        await connection.close()
    except Exception as exc:  # any failure means "not usable"; the reason is shown verbatim
        problems.append(
            f"RabbitMQ does not answer at {_redact(amqp_url)} ({exc or type(exc).__name__}).\n"
            "  Start it with `rabbitmq-server -detached` (then `rabbitmqctl await_startup`)\n"
            "  or `docker compose -f deploy/compose.yaml up -d rabbitmq`; or set AMQP_URL."
        )
    server = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    try:
        conn = await asyncpg.connect(server, timeout=connect_timeout)
        await conn.close()
    except Exception as exc:
        problems.append(
            f"PostgreSQL does not answer at {_redact(server)} ({exc or type(exc).__name__}).\n"
            "  Start it with `pg_ctlcluster --skip-systemctl-redirect <version> main start`\n"
            "  (<version>: `ls /etc/postgresql`) or "
            "`docker compose -f deploy/compose.yaml up -d postgres`; or set DATABASE_URL."
        )
    return problems


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


async def _pump(stream: asyncio.StreamReader, prefix: str, write: Write) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line longer than the buffer: show it in pieces
            line = await stream.read(2**16)
        if not line:
            return
        write(prefix + line.decode(errors="replace").rstrip("\r\n"))


async def _announce_when_listening(url: str, host: str, port: int, say: Write) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        say(f"gateway ready at {url}")
        return


async def supervise(
    commands: Mapping[str, Sequence[str]],
    stop: asyncio.Event,
    *,
    grace: float = 10.0,
    write: Write = _stdout,
    colour: bool = False,
    gateway: tuple[str, int] | None = None,
) -> int:
    """Run `commands` (name -> argv) until `stop` is set or one exits; return the exit code."""
    prefix = _prefixer(list(commands), colour=colour)

    def say(text: str) -> None:
        write(prefix(_SELF) + text)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children: dict[str, asyncio.subprocess.Process] = {}
    pumps: list[asyncio.Task[None]] = []
    for name, argv in commands.items():
        # Own session: the supervisor alone decides when (and how hard) to stop the services.
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            limit=2**20,
        )
        assert process.stdout is not None
        children[name] = process
        pumps.append(asyncio.create_task(_pump(process.stdout, prefix(name), write)))
        say(f"started {name} (pid {process.pid}): {' '.join(argv)}")
    helpers = []
    if gateway is not None and "gateway" in children:
        url = f"http://{gateway[0]}:{gateway[1]}"
        helpers.append(asyncio.create_task(_announce_when_listening(url, *gateway, say)))

    waits = {asyncio.create_task(process.wait()): name for name, process in children.items()}
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*waits, stopped], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    for task in done - {stopped}:
        exit_code = 1
        code = task.result()
        why = " (broker, database or configuration unusable)" if code == 2 else ""
        say(f"{waits[task]} exited unexpectedly with code {code}{why}; stopping the others")
    if stopped in done:
        say("stopping (press Ctrl-C again to kill)")
    for helper in helpers:
        helper.cancel()
    stop.clear()
    await _stop_all(children, grace, stop, say)
    await asyncio.gather(*pumps, *helpers, return_exceptions=True)
    stopped.cancel()
    for name, process in children.items():
        if process.returncode not in (0, -signal.SIGTERM):
            exit_code = exit_code or 1
        say(f"{name} exited with code {process.returncode}")
    return exit_code


async def _stop_all(
    children: Mapping[str, asyncio.subprocess.Process],
    grace: float,
    hurry: asyncio.Event,
    say: Write,
) -> None:
    running = [p for p in children.values() if p.returncode is None]
    for process in running:
        process.send_signal(signal.SIGTERM)

    async def exited() -> None:
        await asyncio.gather(*(p.wait() for p in running))

    async def hurried() -> None:
        await hurry.wait()

    tasks = [asyncio.create_task(exited()), asyncio.create_task(hurried())]
    await asyncio.wait(tasks, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    tasks[1].cancel()
    for name, process in children.items():
        if process.returncode is None:
            say(f"{name} has not stopped; killing it")
            process.kill()
    await tasks[0]


def programs(settings: Settings) -> dict[str, str]:
    """What the run command starts: the core services, then the applications' processes."""
    clashes = sorted(set(SERVICES) & set(settings.app_processes))
    if clashes:
        raise ValueError(f"RELAYFLOW_APP_PROCESSES reuses the core services' names {clashes}")
    return {**SERVICES, **settings.app_processes}


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="relayflow-run", description=__doc__)
    try:
        available = programs(settings)
    except ValueError as exc:
        parser.error(str(exc))
    parser.add_argument(
        "--only",
        type=lambda v: [name.strip() for name in v.split(",") if name.strip()],
        default=list(available),
        help=f"comma-separated services to run (default: all of {','.join(available)})",
    )
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait on stop")
    parser.add_argument(
        "--check", action="store_true", help="only check that RabbitMQ and PostgreSQL answer"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(available))
    if unknown or not args.only:
        parser.error(f"unknown services {unknown}; choose from {','.join(available)}")
    # aiormq logs every failed connection attempt itself; check_services explains it better.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    host = os.environ.get("RELAYFLOW_GATEWAY_HOST", "127.0.0.1")
    port = int(os.environ.get("RELAYFLOW_GATEWAY_PORT", "8000"))
    gateway = ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)  # noqa: S104
    commands = {
        name: [sys.executable, "-m", module]
        for name, module in available.items()
        if name in args.only
    }
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ

    async def run() -> int:
        problems = await check_services(settings.amqp_url, settings.database_url)
        if problems:
            for problem in problems:
                print(f"relayflow-run: {problem}", file=sys.stderr)
            return 2
        if args.check:
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await supervise(commands, stop, grace=args.grace, colour=colour, gateway=gateway)

    try:
        sys.exit(asyncio.run(run()))
    except KeyboardInterrupt:  # Ctrl-C during the checks, before any service started
        sys.exit(130)


if __name__ == "__main__":
    main()
