"""The bounded chaos suite, as CI runs it: a few hundred workflows under random faults, one in
five of them mapped (`ledgerMap`, `batchImport`, 20 to 50 items each)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from typing import Any

import pytest

from chaos.checks import History, ParentLink, judge, map_stream_violation
from relayflow.model import ids
from tests.tools.cluster import ROOT

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


@pytest.mark.chaos
@pytest.mark.e2e
@pytest.mark.timeout(900)
async def test_bounded_chaos_run_loses_duplicates_and_invents_nothing() -> None:
    """The promise in numbers: under kills, restarts, cuts, duplicated, reordered and malformed
    messages, lost = duplicated = unexpected = 0 — for mapped workflows too, item by item —
    queues drain, the outbox empties, dead letters are exactly the malformed messages, and
    reconnecting SSE clients see every event once."""
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
    assert (report["missing_effects"], report["stray_effects"], report["wrong_outputs"]) == (
        0,
        0,
        0,
    ), report
    # The mapped workload really ran: some maps completed, item by item.
    assert report["mapped_completed"] > 0, report
    assert report["ok"], report
    assert process.returncode == 0


# The checks themselves, on made-up histories: a check that cannot fail proves nothing.

MAPPED = "wf_mapped"
CHILD = ids.child_workflow_id(MAPPED, "notifyOwner", "0", 1)


CLEAN = History(
    attempted=frozenset({MAPPED}),
    accepted=frozenset({MAPPED}),
    statuses={MAPPED: "completed", CHILD: "completed"},
    effects={(MAPPED, "tallyItem", "k2"): 1, (MAPPED, "tallyItem", "k1"): 1},
    expected={MAPPED: frozenset({("tallyItem", "k2"), ("tallyItem", "k1")})},
    expected_outputs={MAPPED: {"keys": ["k2", "k1"]}},
    outputs={MAPPED: {"keys": ["k2", "k1"]}},
    parents={CHILD: ParentLink(MAPPED, "notifyOwner", "0", 1)},
)


def _history(**changes: Any) -> History:
    return dataclasses.replace(CLEAN, **changes)


def test_a_clean_mapped_history_passes_and_its_child_is_expected() -> None:
    """A completed map with each item's effect once, its output in item order and a child
    under the id its parent step derives: nothing to report."""
    verdict = judge(_history())
    assert (verdict.lost, verdict.duplicated, verdict.unexpected) == ([], [], [])
    assert (verdict.missing_effects, verdict.stray_effects, verdict.wrong_outputs) == ([], [], [])
    assert verdict.children == 1


def test_an_item_effect_twice_missing_or_under_another_key_is_reported() -> None:
    """Per item, not per step: one item counted twice, another not at all, one under a key
    that is no item's."""
    verdict = judge(
        _history(
            effects={(MAPPED, "tallyItem", "k2"): 2, (MAPPED, "tallyItem", "zz"): 1},
        )
    )
    assert verdict.duplicated == [(MAPPED, "tallyItem", "k2", 2)]
    assert verdict.missing_effects == [(MAPPED, "tallyItem", "k1")]
    assert verdict.stray_effects == [(MAPPED, "tallyItem", "zz")]


def test_a_refused_second_row_counts_as_a_duplicate() -> None:
    """batchImport's key refuses a second import of a line: the workflow fails with the key's
    name in its error, and that is a duplicated effect, not just a failure."""
    verdict = judge(
        _history(
            statuses={MAPPED: "failed"},
            errors={MAPPED: 'duplicate key value violates unique constraint "imported_items_pkey"'},
        )
    )
    assert verdict.duplicated == [(MAPPED, "<refused by its key>", "imported_items_pkey", 2)]


def test_outputs_out_of_item_order_and_children_under_other_ids_are_reported() -> None:
    """A map's output in another order than its items, and a workflow that claims a parent
    of ours under an id that parent's step would never derive."""
    stranger = "wf_stranger"
    verdict = judge(
        _history(
            outputs={MAPPED: {"keys": ["k1", "k2"]}},
            statuses={MAPPED: "completed", CHILD: "running", stranger: "completed"},
            parents={
                CHILD: ParentLink(MAPPED, "notifyOwner", "0", 1),
                stranger: ParentLink(MAPPED, "notifyOwner", "0", 2),
            },
        )
    )
    assert verdict.wrong_outputs == [MAPPED]
    assert verdict.unexpected == [stranger]
    assert verdict.lost == [CHILD]  # a child we owe, not terminal


def test_mapped_streams_carry_item_keys_and_progress() -> None:
    """An item event must name one of the workflow's items; a completed map must have shown
    its progress."""
    keys = frozenset({"k1"})
    assert map_stream_violation([("step.progress", None)], keys, completed=True) is None
    assert map_stream_violation([("step.item.failed", "k9")], keys, completed=False)
    assert map_stream_violation([("step.started", None)], keys, completed=True)
