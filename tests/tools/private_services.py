"""Private RabbitMQ nodes and PostgreSQL clusters for tests that restart them.

The machine's shared broker and database are used by other people's tests at the same time, so
a test that restarts a broker or a database gets its own: a second RabbitMQ node (own node name,
ports, Mnesia and log directories, Erlang cookie, no plugins) and a second PostgreSQL cluster
(`initdb` in a temporary directory, run as the `postgres` OS user when we are root). Both are
async context managers that always stop the instance and remove its files, also on failure.

    async with PrivateRabbit() as rabbit, PrivatePostgres() as postgres:
        rabbit.url, postgres.url("mydb")
        await rabbit.restart()          # stop_app + start_app: a fast broker restart
        await postgres.restart()        # pg_ctl restart -m fast

Ports are taken below the kernel's ephemeral range (32768+): RabbitMQ's listeners cannot bind a
port that an outgoing connection happens to hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import tempfile
import uuid
from pathlib import Path

import asyncpg

from relayflow.amqp.connection import connect_plain
from tests.tools.lifecycle import Lifecycle

RABBITMQ_BIN = Path(os.environ.get("RELAYFLOW_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
POSTGRES_BIN = Path(os.environ.get("RELAYFLOW_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))


class PrivateServiceError(RuntimeError):
    """A private instance could not be started or controlled."""


def free_low_port(low: int = 20000, high: int = 32000) -> int:
    """A TCP port that is free now, outside the ephemeral range."""
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise PrivateServiceError("no free port found")


async def _run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    process = await asyncio.create_subprocess_exec(
        *map(str, argv),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise PrivateServiceError(f"{argv[0]} timed out after {timeout}s") from None
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise PrivateServiceError(f"{' '.join(map(str, argv))} failed:\n{text[-3000:]}")
    return text


class PrivateRabbit(Lifecycle):
    """A RabbitMQ node of our own (3.10 tested): `rabbitmq-server` as a child process.

    `home` is where the node and its CLI find their Erlang cookie: the nodes of one cluster
    (`tests.tools.rabbit_cluster`) share it; by default each node has its own. `config` is added
    to its `rabbitmq.conf`."""

    def __init__(
        self, *, name: str | None = None, home: Path | None = None, config: str = ""
    ) -> None:
        self.node = f"{name or 'relayflow-chaos-' + uuid.uuid4().hex[:8]}@localhost"
        self.port = 0
        self.dist_port = 0
        self._home = home
        self._config = config
        self.paused = False
        self._dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _env(self) -> dict[str, str]:
        assert self._dir is not None
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            # The CLI and the node find the same cookie here, not the shared node's.
            "HOME": str(self._home or self._dir / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self._dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self._dir / "log"),
            "RABBITMQ_PID_FILE": str(self._dir / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self._dir / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(self._dir / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    async def ctl(self, *args: str, timeout: float = 60) -> str:
        return await _run(
            RABBITMQ_BIN / "rabbitmqctl", "-n", self.node, *args, env=self._env(), timeout=timeout
        )

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="relayflow-rabbit-"))
        (self._dir / "home").mkdir()
        self.port = free_low_port()
        self.dist_port = free_low_port()
        (self._dir / "enabled_plugins").write_text("[].\n")
        (self._dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            # Plenty of head room: a chaos run must not trip a memory or disk alarm.
            "disk_free_limit.absolute = 50MB\n" + self._config
        )
        (self._dir / "rabbitmq-env.conf").write_text("")
        try:
            await self.launch()
        except BaseException:
            await self.stop()
            raise

    async def launch(self, *, wait: bool = True) -> None:
        """Start `rabbitmq-server` on this node's ports and files (again, after `kill`)."""
        assert self._dir is not None
        log = (self._dir / "server.log").open("ab")
        self._process = await asyncio.create_subprocess_exec(
            str(RABBITMQ_BIN / "rabbitmq-server"),
            env=self._env(),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            await self.wait_ready()

    async def kill(self) -> None:
        """SIGKILL the node (its whole process group): a crash, nothing flushed or said."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    async def shut_down(self) -> None:
        """`rabbitmqctl stop`: the node goes down cleanly and keeps its files (`launch` again)."""
        if self._process is None or self._process.returncode is not None:
            return
        await self.ctl("stop", timeout=60)
        await asyncio.wait_for(self._process.wait(), 60)

    def pause(self) -> None:
        """SIGSTOP: the node hangs, its sockets stay open and nothing answers."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None or self._process.returncode is not None:
            raise PrivateServiceError(f"{self.node} is not running")
        os.killpg(self._process.pid, signum)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def answering(self) -> bool:
        """Running and not paused."""
        return self.running and not self.paused

    async def wait_ready(self, timeout: float = 90) -> None:
        """Until the node has booted and AMQP answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._process is not None and self._process.returncode is not None:
                raise PrivateServiceError(f"rabbitmq-server exited:\n{self.logs()[-3000:]}")
            try:
                connection = await connect_plain(self.url, timeout=2)
            except Exception:
                if loop.time() > deadline:
                    raise PrivateServiceError(
                        f"{self.node} did not answer within {timeout}s:\n{self.logs()[-3000:]}"
                    ) from None
                await asyncio.sleep(0.2)
                continue
            await connection.close()
            return

    def logs(self) -> str:
        if self._dir is None:
            return ""
        path = self._dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop_app(self) -> None:
        """The broker goes away (every connection closed, port shut); the node stays."""
        await self.ctl("stop_app")

    async def start_app(self) -> None:
        await self.ctl("start_app")
        await self.wait_ready()

    async def restart(self) -> None:
        """A broker restart: stop the RabbitMQ application and start it again. Durable queues
        and persistent messages survive; every client connection is closed."""
        await self.stop_app()
        await self.start_app()

    async def stop(self) -> None:
        """Stop the node and remove its files; safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            # A paused node answers nothing, not even `stop`.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)
            self.paused = False
            with contextlib.suppress(PrivateServiceError):
                await self.ctl("stop", timeout=30)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class PrivatePostgres(Lifecycle):
    """A PostgreSQL cluster of our own in a temporary directory, trust auth, loopback only."""

    def __init__(self) -> None:
        self.port = 0
        self._dir: Path | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def data_dir(self) -> Path:
        assert self._dir is not None
        return self._dir / "data"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def _as_owner(self, *argv: str | Path, timeout: float = 60) -> str:
        command: list[str | Path] = list(argv)
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        return await _run(*command, timeout=timeout)

    def _options(self) -> str:
        assert self._dir is not None
        return (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 "
            # Not a durability test of PostgreSQL itself: the OS never crashes here.
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )

    async def pg_ctl(self, *args: str, timeout: float = 60) -> str:
        return await self._as_owner(
            POSTGRES_BIN / "pg_ctl",
            "-D",
            self.data_dir,
            "-w",
            "-t",
            str(int(timeout)),
            *args,
            timeout=timeout + 5,
        )

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="relayflow-pg-"))
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
        self.port = free_low_port()
        try:
            await self._create_data()
            await self.start_server()
        except BaseException:
            await self.stop()
            raise

    async def _create_data(self) -> None:
        """A fresh cluster; a standby (`tests.tools.pg_standby`) copies its primary's instead."""
        await self._as_owner(
            POSTGRES_BIN / "initdb",
            "-D",
            self.data_dir,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        )

    async def start_server(self) -> None:
        assert self._dir is not None
        await self.pg_ctl("-o", self._options(), "-l", str(self._dir / "server.log"), "start")
        await self.wait_ready()

    async def stop_server(self, mode: str = "fast") -> None:
        """`fast`: sessions are terminated, then a clean shutdown; `immediate`: like a crash."""
        await self.pg_ctl("-m", mode, "stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as when its machine dies: no
        shutdown checkpoint, no goodbye to clients or standbys. The data directory stays."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            raise PrivateServiceError(f"PostgreSQL on {self.port} is not running")
        postmaster = int(pid_file.read_text().split()[0])
        # Its children first, found before it dies (they would be handed to init after).
        doomed = [*_children_of(postmaster), postmaster]
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def restart(self, mode: str = "fast") -> None:
        """Every connection is closed; transactions in flight are rolled back."""
        await self.stop_server(mode)
        await self.start_server()

    async def wait_ready(self, timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                conn = await asyncpg.connect(self.url(), timeout=2)
            except Exception:
                if loop.time() > deadline:
                    raise PrivateServiceError(f"PostgreSQL on {self.port} did not answer") from None
                await asyncio.sleep(0.1)
                continue
            await conn.close()
            return

    def logs(self) -> str:
        if self._dir is None:
            return ""
        path = self._dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def stop(self) -> None:
        """Stop the cluster and remove its files; safe to call twice."""
        if self._dir is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(PrivateServiceError):
                await self.pg_ctl("-m", "immediate", "stop", timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None


def _children_of(parent: int) -> list[int]:
    """The processes whose parent is `parent` (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(entry.name))
    return children
