"""Run the whole system in the foreground (`relayflow-run`): one OS process per service, as in
production, with each output line prefixed by the service's name.

Serves the applications `--app` names (packages, installed or in the working directory; default
RELAYFLOW_APPS, see `relayflow.applications`), and starts the processes they declare after the
core services; a package that does not import or has no workflows stops it before anything runs.

Checks first that RabbitMQ and PostgreSQL answer; forwards SIGINT/SIGTERM to every service and
kills the ones that have not stopped after a grace period. A service that dies on its own is
started again after a pause that doubles with each death in a row (0.5 s up to 30 s), saying
why; only one that keeps dying (5 times within a minute) stops the run, which then shows its last
lines and exits non-zero. The services' state is in RabbitMQ and PostgreSQL, so a restarted one
takes up what was in flight.

Says where each service's Prometheus metrics are: the orchestrator on 127.0.0.1:9101, the step
service on 9102, the external system on 9103 (`RELAYFLOW_METRICS_PORT` moves the first; 0: none).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from relayflow import applications
from relayflow.amqp.connection import connect_once, redact
from relayflow.db.hosts import connect
from relayflow.errors import ConfigurationError, DefinitionError
from relayflow.settings import Settings
from relayflow.steps import StepRegistry

# The core services, in start order: name shown in the logs -> module run with `python -m`. The
# applications' own processes (their `PROCESSES`, or `RELAYFLOW_APP_PROCESSES`) start after them.
SERVICES: dict[str, str] = {
    "gateway": "services.gateway",
    "orchestrator": "services.orchestrator",
    "steps": "services.steps",
}
# Where the run command's services serve Prometheus metrics: RELAYFLOW_METRICS_PORT in its own
# environment is the first port (0: none), given to the orchestrator, and each process after it
# (the step service, then the applications') takes the next one; the gateway serves /metrics on
# its HTTP port instead.
METRICS_FIRST_PORT = 9101
# Module lists that, set in the environment, replace what the applications give.
_MODULE_SETTINGS = ("RELAYFLOW_WORKFLOWS", "RELAYFLOW_STEP_MODULES")
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
        connection = await connect_once(amqp_url, timeout=connect_timeout)
        await connection.close()
    except Exception as exc:  # any failure means "not usable"; the reason is shown verbatim
        problems.append(
            f"RabbitMQ does not answer at {redact(amqp_url)} ({exc or type(exc).__name__}).\n"
            "  Start it with `rabbitmq-server -detached` (then `rabbitmqctl await_startup`)\n"
            "  or `docker compose -f deploy/compose.yaml up -d rabbitmq`; or set AMQP_URL."
        )
    server = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    try:
        conn = await connect(server, timeout=connect_timeout)
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


@dataclass(frozen=True, slots=True)
class Restarts:
    """When a service that died on its own is started again: after `first` seconds, doubling
    with each death in a row up to `longest`; a service that lives `steady` seconds starts the
    count again. `limit` deaths within `window` seconds is a crash loop: the run stops."""

    first: float = 0.5
    longest: float = 30.0
    steady: float = 60.0
    limit: int = 5
    window: float = 60.0

    def delay(self, in_a_row: int) -> float:
        return float(min(self.first * 2 ** min(in_a_row - 1, 16), self.longest))


class _CrashLoop(Exception):
    def __init__(self, name: str, code: int | None, deaths: int, last_lines: Sequence[str]):
        super().__init__(name)
        self.name, self.code, self.deaths, self.last_lines = name, code, deaths, last_lines


class _Service:
    """One service: started, restarted when it dies on its own, stopped on request."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        prefix: str,
        write: Write,
        say: Write,
        restarts: Restarts,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._env = dict(env or {})
        self._argv = list(argv)
        self._prefix = prefix
        self._write = write
        self._say = say
        self._restarts = restarts
        self.process: asyncio.subprocess.Process | None = None
        self.last_lines: deque[str] = deque(maxlen=20)
        self._pumps: list[asyncio.Task[None]] = []

    async def _start(self) -> asyncio.subprocess.Process:
        env = {**os.environ, **self._env, "PYTHONUNBUFFERED": "1"}
        # Own session: the supervisor alone decides when (and how hard) to stop the services.
        process = await asyncio.create_subprocess_exec(
            *self._argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            limit=2**20,
        )
        assert process.stdout is not None
        self.process = process
        self._pumps.append(asyncio.create_task(self._pump(process.stdout)))
        return process

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the buffer: show it in pieces
                line = await stream.read(2**16)
            if not line:
                return
            text = line.decode(errors="replace").rstrip("\r\n")
            self.last_lines.append(text)
            self._write(self._prefix + text)

    async def keep_running(self) -> None:
        """Run until cancelled (a stop); raises `_CrashLoop` when the service keeps dying."""
        loop = asyncio.get_running_loop()
        deaths: deque[float] = deque()
        in_a_row = 0
        started_once = False
        while True:
            process = await self._start()
            began = loop.time()
            verb = "restarted" if started_once else "started"
            started_once = True
            self._say(f"{verb} {self.name} (pid {process.pid}): {' '.join(self._argv)}")
            code = await process.wait()
            now = loop.time()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            self._pumps.clear()
            in_a_row = 1 if now - began >= self._restarts.steady else in_a_row + 1
            deaths.append(now)
            while deaths and now - deaths[0] > self._restarts.window:
                deaths.popleft()
            why = " (broker, database or configuration unusable)" if code == 2 else ""
            if len(deaths) >= self._restarts.limit:
                raise _CrashLoop(self.name, code, len(deaths), list(self.last_lines))
            delay = self._restarts.delay(in_a_row)
            self._say(
                f"{self.name} exited unexpectedly with code {code}{why}; restarting it in "
                f"{delay:g}s ({len(deaths)} exit(s) in the last {self._restarts.window:g}s; "
                f"{self._restarts.limit} stop the run)"
            )
            await asyncio.sleep(delay)

    async def drained(self) -> None:
        await asyncio.gather(*self._pumps, return_exceptions=True)


async def supervise(
    commands: Mapping[str, Sequence[str]],
    stop: asyncio.Event,
    *,
    grace: float = 10.0,
    write: Write = _stdout,
    colour: bool = False,
    gateway: tuple[str, int] | None = None,
    restarts: Restarts | None = None,
    metrics: Mapping[str, tuple[str, int]] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run `commands` (name -> argv) until `stop` is set, restarting a service that dies on its
    own (`restarts`); a crash loop stops the run. `metrics`: the (host, port) each service
    serves its metrics on, handed to it as RELAYFLOW_METRICS_HOST and _PORT; `env`: what every
    service's environment adds to this one's. Returns the exit code."""
    prefix = _prefixer(list(commands), colour=colour)
    metrics = metrics or {}
    restarts = restarts or Restarts()

    def say(text: str) -> None:
        write(prefix(_SELF) + text)

    services = [
        _Service(
            name,
            argv,
            prefix=prefix(name),
            write=write,
            say=say,
            restarts=restarts,
            env={**(env or {}), **(_metrics_env(*metrics[name]) if name in metrics else {})},
        )
        for name, argv in commands.items()
    ]
    _announce_metrics(metrics, commands, say)
    runners = {asyncio.create_task(service.keep_running()): service for service in services}
    helpers = []
    if gateway is not None and "gateway" in commands:
        url = f"http://{gateway[0]}:{gateway[1]}"
        helpers.append(asyncio.create_task(_announce_when_listening(url, *gateway, say)))
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*runners, stopped], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    for task, service in runners.items():
        if task not in done:
            continue
        exit_code = 1
        failure = task.exception()
        if isinstance(failure, _CrashLoop):
            say(
                f"{failure.name} exited {failure.deaths} times within "
                f"{restarts.window:g}s (last code {failure.code}); stopping the "
                f"run. Its last lines:"
            )
            for line in failure.last_lines:
                say(f"  {line}")
        elif failure is not None:
            say(f"supervising {service.name} failed: {failure!r}; stopping the run")
    if stopped in done:
        say("stopping (press Ctrl-C again to kill)")
    for helper in helpers:
        helper.cancel()
    # No more restarts; then stop what runs.
    for task in runners:
        task.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    stop.clear()
    children = {s.name: s.process for s in services if s.process is not None}
    await _stop_all(children, grace, stop, say)
    await asyncio.gather(*(s.drained() for s in services), *helpers, return_exceptions=True)
    stopped.cancel()
    for name, process in children.items():
        if process.returncode not in (0, -signal.SIGTERM) and exit_code == 0:
            exit_code = 1
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


def _announce_metrics(
    metrics: Mapping[str, tuple[str, int]], commands: Mapping[str, Sequence[str]], say: Write
) -> None:
    for name, (host, port) in metrics.items():
        if name in commands:
            say(f"{name} metrics at http://{host}:{port}/metrics")


def _metrics_env(host: str, port: int) -> dict[str, str]:
    return {"RELAYFLOW_METRICS_HOST": host, "RELAYFLOW_METRICS_PORT": str(port)}


def metrics_ports(names: Sequence[str], first: int) -> dict[str, int]:
    """The metrics port of each of `names` but the gateway's, in order from `first` (0: none).
    Numbered over every program the run command knows, so that `--only` moves no port."""
    if not first:
        return {}
    served = [name for name in names if name != "gateway"]
    return {name: first + offset for offset, name in enumerate(served)}


def programs(settings: Settings) -> dict[str, str]:
    """What the run command starts: the core services, then the applications' processes
    (`RELAYFLOW_APP_PROCESSES`, or else what the applications declare). ValueError when one
    takes a core service's name; ConfigurationError when an application does not import."""
    own = (
        settings.app_processes
        if settings.app_processes is not None
        else applications.processes(settings.apps)
    )
    clashes = sorted(set(SERVICES) & set(own))
    if clashes:
        raise ValueError(f"RELAYFLOW_APP_PROCESSES reuses the core services' names {clashes}")
    return {**SERVICES, **own}


def check_apps(settings: Settings) -> None:
    """Load what the services will load — each application, its workflows and step bodies,
    their typed reads — so that a broken application stops the run at once, saying which and
    why, rather than as five crashes of every service. ConfigurationError when it is wrong."""
    workflows = applications.load_workflows(settings.apps, settings.workflows)
    try:
        StepRegistry.from_modules(settings.step_modules).bind(workflows)
    except DefinitionError as exc:
        raise ConfigurationError(str(exc)) from exc


def _app_settings(apps: Sequence[str]) -> Settings:
    """The settings with `--app`: the applications named replace RELAYFLOW_APPS, and module
    lists set in the environment, which would replace theirs unseen, are refused."""
    overriding = [var for var in _MODULE_SETTINGS if var in os.environ]
    if overriding:
        raise ConfigurationError(
            f"--app names the applications, but {' and '.join(overriding)} set in the "
            "environment would replace their modules; unset it, or drop --app"
        )
    return Settings(apps=list(apps))


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relayflow-run", description=__doc__)
    parser.add_argument(
        "--app",
        type=_names,
        action="extend",
        metavar="PACKAGE[,PACKAGE]",
        help="the applications to serve, by package (repeatable; default: RELAYFLOW_APPS, or "
        f"{','.join(applications.DEFAULT_APPS)}); see relayflow.applications",
    )
    parser.add_argument(
        "--only",
        type=_names,
        help="comma-separated services to run (default: all; the core's are "
        f"{','.join(SERVICES)}, then the applications' own processes)",
    )
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait on stop")
    parser.add_argument(
        "--check", action="store_true", help="only check that RabbitMQ and PostgreSQL answer"
    )
    args = parser.parse_args(argv)
    # The services run as `python -m …` from this directory, which puts it first on their
    # import path: an application here, not installed, imports there, so it must here too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        settings = _app_settings(args.app) if args.app else Settings()
        available = programs(settings)
    except (ValueError, ConfigurationError) as exc:
        parser.error(str(exc))
    only = args.only if args.only is not None else list(available)
    unknown = sorted(set(only) - set(available))
    if unknown or not only:
        parser.error(f"unknown services {unknown}; choose from {','.join(available)}")
    # aiormq logs every failed connection attempt itself; check_services explains it better.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    host = os.environ.get("RELAYFLOW_GATEWAY_HOST", "127.0.0.1")
    port = int(os.environ.get("RELAYFLOW_GATEWAY_PORT", "8000"))
    gateway = ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)  # noqa: S104
    commands = {
        name: [sys.executable, "-m", module] for name, module in available.items() if name in only
    }
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    first_port = int(os.environ.get("RELAYFLOW_METRICS_PORT", str(METRICS_FIRST_PORT)))
    metrics = {
        name: (settings.metrics_host, port)
        for name, port in metrics_ports(list(available), first_port).items()
    }

    async def run() -> int:
        problems = await check_services(settings.amqp_url, settings.database_url)
        if problems:
            for problem in problems:
                print(f"relayflow-run: {problem}", file=sys.stderr)
            return 2
        if args.check:
            return 0
        try:
            check_apps(settings)
        except ConfigurationError as exc:
            print(f"relayflow-run: {exc}", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await supervise(
            commands,
            stop,
            grace=args.grace,
            colour=colour,
            gateway=gateway,
            metrics=metrics,
            env={"RELAYFLOW_APPS": ",".join(settings.apps)} if args.app else None,
        )

    try:
        sys.exit(asyncio.run(run()))
    except KeyboardInterrupt:  # Ctrl-C during the checks, before any service started
        sys.exit(130)


if __name__ == "__main__":
    main()
