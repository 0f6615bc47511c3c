"""relayflow as a user gets it: the wheel built from this tree, installed with the example
application (`examples/orders`) into a fresh virtualenv outside the repository, and the system
run from there — `relayflow-run --app orders_app`, its working directory outside the checkout,
on a database and a queue namespace of its own — serving an order over HTTP to its end.

What the package forgot to ship shows here and nowhere else: the core's and the application's
migrations and SQL, the dashboard's assets, the probes' query.

Installing: dependencies come from the machine's package index through pip's cache, and this
run's pip installs into the new virtualenv (`pip --python`), which is made without a pip of its
own. Measured on the 2 shared cores (load 8): `venv` with its own pip took 22 s, without 0.1 s;
the install from the index 14-53 s. A wheelhouse built from the cache (`pip wheel`, 4 s) and
installed with `--no-index --find-links` took 22 s under the same load (10 s against 21 s on a
quiet machine): no gain worth a second resolve, so the plain install it is."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from orders_app.steps import steps
from orders_app.workflows import ORDER

from relayflow.testing_system import running_app
from relayflow.topology import Topology
from tests.e2e.conftest import ROOT
from tests.support import delete_topology, drop_database, unique_name, wait_for, with_database

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# What building relayflow's wheel reads: its metadata, and its three top-level packages.
SOURCES = ("pyproject.toml", "README.md", "relayflow", "services", "apps")
EXAMPLE = ROOT / "examples" / "orders"
# The step queues the services declare: every task of the workflow, and every body the step
# service serves (local ones included).
STEP_QUEUES = sorted({*ORDER.task_names(), *steps.names()})
ENDED = {"completed", "failed", "compensated", "compensation_failed", "cancelled"}
_BUILD_LITTER = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


@dataclass
class Installed:
    python: Path
    run: Path
    log: Path
    # The sources the wheels were built from, and the wheels, relayflow's first.
    sources: list[Path]
    wheels: list[Path]


@dataclass
class Served:
    base_url: str
    database_url: str


async def sh(*argv: str | Path, cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    """Run a command to its end, its output appended to `log`; a failure shows the output."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(map(str, argv))}\n".encode())
        out.flush()
        process = await asyncio.create_subprocess_exec(
            *map(str, argv), cwd=cwd, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
        began = asyncio.get_running_loop().time()
        code = await process.wait()
        out.write(
            f"# exit {code} after {asyncio.get_running_loop().time() - began:.1f}s\n".encode()
        )
    if code != 0:
        raise AssertionError(f"{argv[0]} … exited {code}:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would point a process back at the checkout or the test
    run's own settings."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RELAYFLOW_", "PYTHON", "VIRTUAL_ENV", "PYTEST"))
    }
    return {**kept, **extra}


@pytest.fixture(scope="module")
async def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheels of relayflow and of the example, built from copies of their sources (the
    checkout is left as it was), installed into a new virtualenv."""
    where = tmp_path_factory.mktemp("wheel")
    log = where / "install.log"
    source = where / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=_BUILD_LITTER)
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    shutil.copytree(EXAMPLE, where / "orders", ignore=shutil.ignore_patterns("tests", "*.egg-info"))
    dist = where / "dist"
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    await sh(
        *pip, "wheel", "--no-deps", "-q", "-w", dist, source, where / "orders", cwd=where, log=log
    )
    venv = where / "venv"
    await sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=where, log=log)
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["relayflow", "relayflow_orders_example"]
    python = venv / "bin" / "python"
    await sh(
        *pip, "--python", python, "install", "-q", *wheels, cwd=where, log=log, env=clean_env()
    )
    return Installed(
        python=python,
        run=venv / "bin" / "relayflow-run",
        log=log,
        sources=[source, where / "orders"],
        wheels=wheels,
    )


def test_every_file_of_the_packages_is_in_the_wheels(installed: Installed) -> None:
    """Not only what the run below reads: every SQL file, asset and migration of every package
    (a signal key's queries are read only when a signal is sent, say)."""
    for source, wheel in zip(installed.sources, installed.wheels, strict=True):
        with zipfile.ZipFile(wheel) as archive:
            shipped = set(archive.namelist())
        packages = [path for path in source.iterdir() if (path / "__init__.py").is_file()]
        files = {
            str(path.relative_to(source))
            for package in packages
            for path in package.rglob("*")
            if path.is_file()
        }
        assert files, source
        assert files - shipped == set(), f"{wheel.name} lacks these"


async def test_the_installed_packages_are_the_wheels_not_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    """Nothing the test below sees may come from the repository: every module imports from
    the virtualenv's site-packages."""
    log = tmp_path / "where.log"
    where = "import relayflow, services, apps, orders_app as o; print(*(m.__file__ for m in ("
    where += "relayflow, services, apps, o)))"
    await sh(installed.python, "-c", where, cwd=tmp_path, log=log, env=clean_env())
    printed = [line for line in log.read_text().splitlines() if not line.startswith(("$", "#"))]
    files = printed[-1].split()
    site = installed.python.parent.parent / "lib"
    assert len(files) == 4
    assert all(Path(file).is_relative_to(site) for file in files), files


@pytest.fixture
async def served(
    installed: Installed,
    amqp_url: str,
    service_endpoints: tuple[str, str],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    tmp_path: Path,
) -> AsyncIterator[Served]:
    """`relayflow-run --app orders_app` from the virtualenv, in a directory of its own; the
    database it names does not exist yet (the services create and migrate it)."""
    namespace, database = unique_name("wheel-"), unique_name("relayflow_wheel_")
    server = service_endpoints[1]
    try:
        async with running_app(
            [installed.run],
            app="orders_app",
            amqp_url=amqp_url,
            database_url=with_database(server, database),
            namespace=namespace,
            cwd=tmp_path,
            base_env=clean_env(),
        ) as app:
            yield Served(app.base_url, app.env["DATABASE_URL"])
    finally:
        await delete_topology(amqp_connection, Topology(namespace), STEP_QUEUES)
        await drop_database(server, database)


async def test_an_order_runs_from_the_installed_wheel(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as client:
        # The dashboard's page and assets are package data.
        home = await client.get("/")
        assert home.status_code == 200
        assert "text/html" in home.headers["content-type"]
        assert (await client.get("/static/style.css")).status_code == 200
        order = {
            "orderId": "o-wheel",
            "items": [
                {"sku": "mug", "qty": 2, "unitPrice": 1250},
                {"sku": "tea", "qty": 1, "unitPrice": 400},
            ],
            "card": "tok_visa",
            "country": "NL",
        }
        response = await client.post("/workflows/order", json=order)
        assert response.status_code == 202, response.text
        workflow_id = response.json()["workflowId"]

        async def ended() -> dict[str, Any] | None:
            found = await client.get(f"/workflows/{workflow_id}")
            body: dict[str, Any] = found.json()
            return body if found.status_code == 200 and body["status"] in ENDED else None

        ran: dict[str, Any] = await wait_for(ended, timeout=60, interval=0.1, what="the order")
    assert ran["status"] == "completed", ran
    assert ran["output"]["units"] == 3
    # The example's migrations and SQL came from its wheel: its tables hold the run's effects.
    conn = await asyncpg.connect(served.database_url)
    try:
        shipped = await conn.fetchrow(
            "SELECT order_id, units, tracking FROM order_shipments WHERE workflow_id = $1",
            workflow_id,
        )
    finally:
        await conn.close()
    assert shipped is not None
    assert tuple(shipped) == ("o-wheel", 3, ran["output"]["tracking"])
