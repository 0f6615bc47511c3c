"""The supervisor that runs every service as its own process (`relayflow-run`), exercised with
small stand-in programs instead of the real services."""

from __future__ import annotations

import asyncio
import gc
import re
import sys
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from relayflow import supervisor
from relayflow.settings import Settings

# Exits 0 on SIGTERM, like the real services.
POLITE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('hello from {name}', flush=True)\n"
    "print('to stderr', file=sys.stderr, flush=True)\n"
    "time.sleep(60)\n"
)
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring SIGTERM', flush=True)\n"
    "time.sleep(60)\n"
)


def program(source: str, name: str = "") -> list[str]:
    return [sys.executable, "-c", source.replace("{name}", name)]


class Output:
    """Collects what the supervisor writes, and lets a test await a line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def write(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    async def wait_for(self, line: str) -> None:
        async with asyncio.timeout(10):
            while line not in self.lines:
                self._changed.clear()
                await self._changed.wait()


async def test_prefixes_output_and_stops_all_on_request() -> None:
    """Operators read interleaved logs by the service prefix; a stop must reach every service."""
    output = Output()
    lines = output.lines
    stop = asyncio.Event()
    commands = {"gateway": program(POLITE, "gw"), "orchestrator": program(POLITE, "orch")}
    run = asyncio.create_task(supervisor.supervise(commands, stop, grace=5, write=output.write))
    await output.wait_for("gateway      | hello from gw")
    await output.wait_for("orchestrator | hello from orch")
    await output.wait_for("orchestrator | to stderr")
    stop.set()
    assert await run == 0
    assert "gateway      | hello from gw" in lines
    assert "orchestrator | hello from orch" in lines
    assert "orchestrator | to stderr" in lines
    assert "run          | gateway exited with code 0" in lines


# Restarts quickly, for the tests: the same rules on a shorter clock.
QUICK = supervisor.Restarts(first=0.05, longest=0.2, steady=5.0, limit=3, window=60.0)

# Dies once (the marker file says it has), then runs politely.
DIES_ONCE = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "marker = sys.argv[1]\n"
    "if not os.path.exists(marker):\n"
    "    open(marker, 'w').close()\n"
    "    print('dying', flush=True)\n"
    "    raise SystemExit(3)\n"
    "print('back', flush=True)\n"
    "time.sleep(60)\n"
)


async def test_a_service_that_dies_is_restarted_and_the_run_goes_on(tmp_path: Path) -> None:
    """A killed service must come back by itself: its work waits in the broker meanwhile."""
    output = Output()
    stop = asyncio.Event()
    commands = {
        "steps": program(POLITE, "steps"),
        "orchestrator": [*program(DIES_ONCE), str(tmp_path / "died")],
    }
    run = asyncio.create_task(
        supervisor.supervise(commands, stop, grace=5, write=output.write, restarts=QUICK)
    )
    await output.wait_for("orchestrator | back")
    assert any(
        "orchestrator exited unexpectedly with code 3; restarting it in 0.05s" in line
        for line in output.lines
    )
    assert any("restarted orchestrator (pid" in line for line in output.lines)
    assert output.lines.count("steps        | hello from steps") == 1  # the others ran on
    stop.set()
    assert await run == 0


async def test_a_service_that_keeps_dying_stops_the_run_and_shows_its_last_lines() -> None:
    """A crash loop (a bad setting, say) must end the run with the reason, not spin forever."""
    lines: list[str] = []
    commands = {
        "steps": program(POLITE, "steps"),
        "external": program("print('no such setting: FOO', flush=True); raise SystemExit(2)"),
    }
    code = await supervisor.supervise(
        commands, asyncio.Event(), grace=5, write=lines.append, restarts=QUICK
    )
    assert code == 1
    assert sum("external exited unexpectedly with code 2" in line for line in lines) == 2
    assert any("external exited 3 times within 60s (last code 2); stopping" in x for x in lines)
    assert any(line.endswith("  no such setting: FOO") and "run" in line for line in lines)
    # 0 when its SIGTERM handler was installed in time, -15 when the signal beat Python's start-up.
    assert any(re.search(r"steps exited with code (0|-15)$", line) for line in lines)


def test_restart_delays_double_up_to_the_longest() -> None:
    restarts = supervisor.Restarts(first=0.5, longest=30.0)
    assert [restarts.delay(n) for n in (1, 2, 3, 7, 50)] == [0.5, 1.0, 2.0, 30.0, 30.0]


async def test_a_service_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    """A hung service must not keep `relayflow-run` (or CI) from ending."""
    output = Output()
    lines = output.lines
    stop = asyncio.Event()
    run = asyncio.create_task(
        supervisor.supervise({"steps": program(STUBBORN)}, stop, grace=0.3, write=output.write)
    )
    await output.wait_for("steps | ignoring SIGTERM")
    stop.set()
    assert await run == 1
    assert any("steps has not stopped; killing it" in line for line in lines)
    assert any("steps exited with code -9" in line for line in lines)


async def test_unreachable_broker_and_database_are_explained() -> None:
    """Starting without RabbitMQ or PostgreSQL must say how to start them, not stack-trace."""
    problems = await supervisor.check_services(
        "amqp://guest:secret@127.0.0.1:1/",
        "postgresql://postgres@127.0.0.1:1/relayflow",
        connect_timeout=2,
    )
    # aio-pika's half-made connection schedules a close when it is collected; collect it here,
    # not during whichever later test the garbage collector happens to run in.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gc.collect()
    assert len(problems) == 2
    assert "rabbitmq-server -detached" in problems[0]
    assert "secret" not in problems[0]
    assert "pg_ctlcluster" in problems[1]
    assert "/postgres" in problems[1]


def test_unknown_service_is_a_usage_error() -> None:
    """A typo in --only should not silently run nothing."""
    with pytest.raises(SystemExit) as exit_info:
        supervisor.main(["--only", "gateway,bogus"])
    assert exit_info.value.code == 2


def test_every_service_runs_as_its_own_module() -> None:
    """Process names must say which service they are, as in production: the core's, then the
    applications' own processes, which live in their packages and not in the core."""
    assert set(supervisor.SERVICES) == {"gateway", "orchestrator", "steps"}
    assert all(module == f"services.{name}" for name, module in supervisor.SERVICES.items())
    programs = supervisor.programs(Settings())
    assert list(programs) == ["gateway", "orchestrator", "steps", "external"]
    assert programs["external"] == "apps.form_submission.external"


def test_application_processes_are_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment without the seed application runs none of its processes; one that names a
    core service's name for its own would shadow it, and is refused."""
    monkeypatch.setenv("RELAYFLOW_APP_PROCESSES", "")
    assert supervisor.programs(Settings()) == supervisor.SERVICES
    monkeypatch.setenv("RELAYFLOW_APP_PROCESSES", "mailer = apps.mail.run")
    assert supervisor.programs(Settings()) == {**supervisor.SERVICES, "mailer": "apps.mail.run"}
    monkeypatch.setenv("RELAYFLOW_APP_PROCESSES", "mailer")
    with pytest.raises(ValidationError, match="name=module"):
        Settings()
    monkeypatch.setenv("RELAYFLOW_APP_PROCESSES", "steps=apps.mail.run")
    with pytest.raises(ValueError, match="core services"):
        supervisor.programs(Settings())
    with pytest.raises(SystemExit) as exit_info:
        supervisor.main(["--check"])
    assert exit_info.value.code == 2


# Prints the metrics address its environment gives it, then runs politely.
SAYS_METRICS = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('port', os.environ.get('RELAYFLOW_METRICS_HOST'),"
    " os.environ.get('RELAYFLOW_METRICS_PORT', 'none'), flush=True)\n"
    "time.sleep(60)\n"
)


async def test_each_service_gets_its_own_metrics_port_and_the_run_says_where() -> None:
    """One RELAYFLOW_METRICS_PORT for all would make the second service's server fail: each
    child is given its own through its environment, and the operator is told where to look."""
    output = Output()
    stop = asyncio.Event()
    commands = {
        "gateway": program(SAYS_METRICS),
        "orchestrator": program(SAYS_METRICS),
        "steps": program(SAYS_METRICS),
    }
    metrics = {"orchestrator": ("127.0.0.1", 9101), "steps": ("127.0.0.1", 9102)}
    run = asyncio.create_task(
        supervisor.supervise(commands, stop, grace=5, write=output.write, metrics=metrics)
    )
    await output.wait_for("orchestrator | port 127.0.0.1 9101")
    await output.wait_for("steps        | port 127.0.0.1 9102")
    await output.wait_for("gateway      | port None none")
    assert "run          | orchestrator metrics at http://127.0.0.1:9101/metrics" in output.lines
    assert "run          | steps metrics at http://127.0.0.1:9102/metrics" in output.lines
    stop.set()
    assert await run == 0


def test_metrics_ports_follow_the_programs_from_the_first() -> None:
    """9101 orchestrator, 9102 steps, 9103 external by default; the gateway serves /metrics on
    its own port; 0 turns them all off."""
    names = list(supervisor.programs(Settings()))
    assert supervisor.metrics_ports(names, supervisor.METRICS_FIRST_PORT) == {
        "orchestrator": 9101,
        "steps": 9102,
        "external": 9103,
    }
    assert supervisor.metrics_ports(names, 9200)["external"] == 9202
    assert supervisor.metrics_ports(names, 0) == {}
