"""Failure-mode fixtures: a private RabbitMQ node and PostgreSQL cluster for the whole session
(tests restart them; the machine's shared ones are never touched), and per test a fresh
database and namespace with every service running as a process behind fault proxies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.tools.cluster import Cluster, running_cluster
from tests.tools.private_services import PrivatePostgres, PrivateRabbit


@pytest.fixture(scope="session")
async def private_rabbit() -> AsyncIterator[PrivateRabbit]:
    async with PrivateRabbit() as rabbit:
        yield rabbit


@pytest.fixture(scope="session")
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    async with PrivatePostgres() as postgres:
        yield postgres


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """Extra environment for the services; a test overrides this fixture to tune them."""
    return {}


@pytest.fixture
async def cluster(
    private_rabbit: PrivateRabbit,
    private_postgres: PrivatePostgres,
    cluster_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Cluster]:
    async with running_cluster(
        private_rabbit, private_postgres, tmp_path_factory.mktemp("logs"), extra_env=cluster_env
    ) as cluster:
        yield cluster


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
