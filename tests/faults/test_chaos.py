"""The bounded chaos suite, as CI runs it: a few hundred workflows under random faults, one in
five of them mapped (`ledgerMap`, `batchImport`, 20 to 50 items each) and about one in seven
`approval` (decision signals at random moments and over both routes, some runs compensating)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from typing import Any

import pytest

from chaos.checks import (
    ApprovalRun,
    History,
    ParentLink,
    ReceivedSignal,
    judge,
    judge_approvals,
    map_stream_violation,
)
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
# Its cluster version: shorter, since it adds a failover to the same faults.
CLUSTER_BOUNDED = [
    "--cluster",
    "--workflows",
    "120",
    "--duration",
    "40",
    "--seed",
    "6",
    "--subscribers",
    "8",
]


async def _chaos(arguments: list[str]) -> dict[str, Any]:
    """Run `python -m chaos` with `arguments`; its report, once the common checks hold."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chaos",
        *arguments,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 840)
    lines = out.decode().strip().splitlines()
    assert lines, f"no report; stderr:\n{err.decode()[-3000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    print(lines[-1])
    assert (report["lost"], report["duplicated"], report["unexpected"]) == (0, 0, 0), report
    assert (report["missing_effects"], report["stray_effects"], report["wrong_outputs"]) == (
        0,
        0,
        0,
    ), report
    # The mapped workload really ran: some maps completed, item by item.
    assert report["mapped_completed"] > 0, report
    approval = {
        name: report[f"approval_{name}"]
        for name in ("lost", "duplicated", "unexpected", "missing_effects", "wrong_status")
    }
    assert set(approval.values()) == {0}, report
    assert report["approval_wrong_outputs"] == 0, report
    # And the approval workload: runs, undos (the seed plans runs that must compensate).
    assert report["approval_runs"] > 0, report
    assert report["approval_undos"] > 0, report
    assert report["ok"], report
    assert process.returncode == 0
    return report


@pytest.mark.chaos
@pytest.mark.e2e
@pytest.mark.timeout(900)
async def test_bounded_chaos_run_loses_duplicates_and_invents_nothing() -> None:
    """The promise in numbers: under kills, restarts, cuts, duplicated, reordered and malformed
    messages, lost = duplicated = unexpected = 0 — for mapped workflows too, item by item, and
    for approval runs, signal by signal and undo by undo — queues drain, the outbox empties,
    dead letters are exactly the malformed messages, and reconnecting SSE clients see every
    event once."""
    await _chaos(BOUNDED)


@pytest.mark.chaos
@pytest.mark.e2e
@pytest.mark.timeout(900)
async def test_bounded_chaos_run_on_the_cluster_survives_node_faults_and_a_failover() -> None:
    """The same checks on three broker nodes, one of them killed, hung or cut off at random
    among the other faults, and on a primary with a synchronous standby, the primary's machine
    lost halfway through and the standby promoted: every service is back within seconds, and
    nothing acknowledged before is lost."""
    report = await _chaos(CLUSTER_BOUNDED)
    assert report["faults"]["failover-database"] == 1, report
    recovered = report["recovery_s"]["failover-database"]
    assert recovered["n"] == 1, report
    assert recovered["max"] < 30, report


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


# The approval checks, on made-up runs.

APPROVAL_WF = "wf_approval"
SIGNAL_1 = ids.signal_id(APPROVAL_WF, "decision", "key-1")
SIGNAL_2 = ids.signal_id(APPROVAL_WF, "decision", "key-2")

APPROVED = ApprovalRun(
    workflow_id=APPROVAL_WF,
    fail_at=None,
    planned_signals=frozenset({SIGNAL_1, SIGNAL_2}),
    confirmed_signals=frozenset({SIGNAL_1, SIGNAL_2}),
    status="completed",
    output={"approved": True, "by": "ada"},
    ledger={"reserve": 1, "charge": 1, "notify": 1},
    invocations={("reserve", "0"): "succeeded", ("charge", "0"): "succeeded"},
    outcome={"approved": True, "by": "ada"},
    received=[
        ReceivedSignal(seq=2, signal_id=SIGNAL_1, approved=True, by="ada"),
        ReceivedSignal(seq=5, signal_id=SIGNAL_2, approved=False, by="bob"),
    ],
    wait_started_seq=4,
    inboxed=frozenset({SIGNAL_1, SIGNAL_2}),
)


def _run(**changes: Any) -> ApprovalRun:
    return dataclasses.replace(APPROVED, **changes)


def test_an_approval_decided_by_its_first_signal_passes() -> None:
    """Two keys, the second disagreeing and later: the first decides, the second is kept
    unused; one kept before the wait and one taken while it waited."""
    verdict = judge_approvals([_run()])
    assert (verdict.lost, verdict.duplicated, verdict.unexpected) == ([], [], [])
    assert (verdict.missing_effects, verdict.wrong_status, verdict.wrong_outputs) == ([], [], [])
    assert (verdict.signals_before_wait, verdict.signals_while_waiting) == (1, 1)


def test_a_signal_counted_twice_dropped_or_unknown_is_reported() -> None:
    """Counted once per key: the same id twice is a duplicate, a confirmed id the inbox never
    took is lost, an id no one sent is unexpected."""
    stranger = ids.signal_id(APPROVAL_WF, "decision", "nobody")
    verdict = judge_approvals(
        [
            _run(
                received=[
                    ReceivedSignal(seq=2, signal_id=SIGNAL_1, approved=True, by="ada"),
                    ReceivedSignal(seq=5, signal_id=SIGNAL_1, approved=True, by="ada"),
                    ReceivedSignal(seq=6, signal_id=stranger, approved=True, by="eve"),
                ],
                inboxed=frozenset({SIGNAL_1}),
            )
        ]
    )
    assert verdict.duplicated == [(APPROVAL_WF, f"signal {SIGNAL_1}", 2)]
    assert verdict.lost == [(APPROVAL_WF, SIGNAL_2)]
    assert verdict.unexpected == [(APPROVAL_WF, f"signal {stranger}")]


def test_a_late_signal_to_an_ended_run_is_not_lost() -> None:
    """A confirmed signal the inbox took after the run had ended is ignored, as it should be."""
    verdict = judge_approvals([_run(received=APPROVED.received[:1])])
    assert verdict.lost == []
    assert verdict.signals_after_end == 1


def test_the_status_and_effects_follow_the_decision_and_fail_at() -> None:
    """Approved with `notify` failing: compensated, each undo once; a run that completed
    instead, or undid twice, or refunded what it never charged, is reported."""
    compensating = _run(
        fail_at="notify",
        status="compensated",
        ledger={"reserve": 1, "charge": 1, "refund": 1, "release": 1},
        invocations={
            ("reserve", "0"): "succeeded",
            ("charge", "0"): "succeeded",
            ("reserve", "undo"): "succeeded",
            ("charge", "undo"): "succeeded",
        },
    )
    clean = judge_approvals([compensating])
    assert (clean.duplicated, clean.unexpected, clean.missing_effects) == ([], [], [])
    assert clean.compensated_undos == 2
    assert judge_approvals([dataclasses.replace(compensating, status="completed")]).wrong_status
    twice = judge_approvals(
        [dataclasses.replace(compensating, ledger={**compensating.ledger, "release": 2})]
    )
    assert twice.duplicated == [(APPROVAL_WF, "release", 2)]
    never_charged = judge_approvals(
        [
            dataclasses.replace(
                compensating,
                fail_at="charge",
                ledger={"reserve": 1, "refund": 1, "release": 1},
                invocations={**compensating.invocations, ("charge", "0"): "failed"},
            )
        ]
    )
    assert (APPROVAL_WF, "refund without charge") in never_charged.unexpected
    assert (APPROVAL_WF, "undo of charge, which never succeeded") in never_charged.unexpected


def test_a_rejection_completes_with_the_reservation_released() -> None:
    """Rejected (whatever `failAt`, which then never runs): completed, `release` once, and the
    output is the decision taken."""
    rejected = _run(
        fail_at="notify",
        received=[ReceivedSignal(seq=3, signal_id=SIGNAL_2, approved=False, by="bob")],
        inboxed=frozenset({SIGNAL_2}),
        confirmed_signals=frozenset({SIGNAL_2}),
        ledger={"reserve": 1, "release": 1},
        output={"approved": False, "by": "bob"},
        outcome={"approved": False, "by": "bob"},
    )
    verdict = judge_approvals([rejected])
    assert (verdict.wrong_status, verdict.unexpected, verdict.wrong_outputs) == ([], [], [])
    wrong = judge_approvals([dataclasses.replace(rejected, output={"approved": True, "by": "ada"})])
    assert wrong.wrong_outputs == [APPROVAL_WF]
