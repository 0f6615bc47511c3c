"""The bounded chaos suite, as CI runs it: a few hundred workflows under random faults."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from tests.tools.cluster import ROOT

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.timeout(900)]

# A bounded run for CI (a few minutes on 2 cores); `scripts/chaos` runs longer ones.
BOUNDED = [
    "--workflows",
    "200",
    "--duration",
    "60",
    "--seed",
    "3",
    "--subscribers",
    "15",
]


async def test_bounded_chaos_run_loses_duplicates_and_invents_nothing() -> None:
    """The promise in numbers: under kills, restarts, cuts, duplicated, reordered and malformed
    messages, lost = duplicated = unexpected = 0, queues drain, the outbox empties, dead letters
    are exactly the malformed messages, and reconnecting SSE clients see every event once."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chaos",
        *BOUNDED,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 840)
    lines = out.decode().strip().splitlines()
    assert lines, f"no report; stderr:\n{err.decode()[-3000:]}"
    report = json.loads(lines[-1])
    print(lines[-1])
    assert (report["lost"], report["duplicated"], report["unexpected"]) == (0, 0, 0), report
    assert report["ok"], report
    assert process.returncode == 0
