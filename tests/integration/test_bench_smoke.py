"""A tiny run of the benchmark harness against our own system only, so that `python -m bench`
keeps working: the real services as processes, a few workflows at 1 and 2 in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.infra import Infra
from bench.ours import Relayflow
from bench.report import figures

pytestmark = pytest.mark.timeout(60)


async def test_bench_harness_drives_relayflow(
    service_endpoints: tuple[str, str], tmp_path: Path
) -> None:
    """Each workflow is submitted over HTTP and completes on its SSE stream; figures come out."""
    amqp_url, server_url = service_endpoints
    system = Relayflow(Infra(amqp_url=amqp_url, server_url=server_url), tmp_path)
    await system.start()
    try:
        serial = await system.run(5, 3, 1)
        load = await system.run(5, 6, 2)
        one = await system.run(1, 2, 1)
        ten = await system.run(10, 2, 1)
        memory = system.memory()
    finally:
        await system.stop()
    assert (serial.errors, load.errors, one.errors, ten.errors) == (0, 0, 0, 0)
    assert len(load.samples) == 6
    assert all(s.accept is not None and s.accept <= s.latency for s in load.samples)
    result = figures({"serial": serial, "load": load, "marginal1": one, "marginal10": ten})
    assert result["throughput"] is not None
    assert result["throughput"] > 0
    assert result["marginal_step"] is not None
    assert set(memory) == {"gateway", "orchestrator1", "steps1"}
    assert all(v is not None and v > 10 for v in memory.values())
