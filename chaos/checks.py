"""The checks, as pure functions over what the run observed and what the database holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relayflow.model import FINISHED, ids

# Every status a run ends in (`compensated` and `compensation_failed` too).
TERMINAL = frozenset(str(status) for status in FINISHED)
PROGRESS_EVENT = "step.progress"
ITEM_EVENT = "step.item."


# A failed workflow whose error names one of these refused a second copy of an effect: the
# effect ran twice, and only the key kept it from counting as 2 (`batchImport`'s rows).
DUPLICATE_KEY_ERRORS = ("imported_items_pkey", "import_notifications_pkey")


@dataclass(frozen=True, slots=True)
class ParentLink:
    """A child workflow's parent reference, as the child's row holds it."""

    workflow_id: str
    step_name: str
    step_key: str
    attempt: int

    def names(self, child_id: str) -> bool:
        """Whether `child_id` is the id this parent step's attempt derives for its child."""
        expected = ids.child_workflow_id(
            self.workflow_id, self.step_name, self.step_key, self.attempt
        )
        return child_id == expected


@dataclass(frozen=True, slots=True)
class History:
    """What the clients saw and what the system holds at the end."""

    attempted: frozenset[str]  # workflow ids we tried to start (derived from our keys)
    accepted: frozenset[str]  # ids the gateway answered 202 for
    statuses: Mapping[str, str]  # every workflow in the database and its status
    # (workflow, step, stepKey) -> committed side effects (a task's stepKey is "0")
    effects: Mapping[tuple[str, str, str], int]
    # workflow -> the (step, stepKey) effects a completed run of it committed exactly once
    expected: Mapping[str, frozenset[tuple[str, str]]]
    # workflow -> the output a completed run returns, for those whose output is known
    expected_outputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)  # completed workflow -> output
    parents: Mapping[str, ParentLink] = field(default_factory=dict)  # child -> its parent
    errors: Mapping[str, str] = field(default_factory=dict)  # failed workflow -> its error


@dataclass(frozen=True, slots=True)
class Verdict:
    lost: list[str] = field(default_factory=list)
    duplicated: list[tuple[str, str, str, int]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing_effects: list[tuple[str, str, str]] = field(default_factory=list)
    # Effects of a completed workflow that its run should not have had (a wrong stepKey).
    stray_effects: list[tuple[str, str, str]] = field(default_factory=list)
    # Completed workflows whose output is not the one their input implies (a map's item order).
    wrong_outputs: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    completed: int = 0
    # Child workflows started by a step of one of ours, each under the id its attempt derives.
    children: int = 0
    # Started by a submission that got no 202 (a 503 or a broken connection): allowed, counted.
    unacknowledged_started: int = 0


def judge(history: History) -> Verdict:
    children = _children(history)
    owed = history.accepted | children
    lost = sorted(i for i in owed if history.statuses.get(i) not in TERMINAL)
    unexpected = sorted(
        i for i in history.statuses if i not in history.attempted and i not in children
    )
    completed = sorted(i for i, s in history.statuses.items() if s == "completed")
    failed = sorted(i for i, s in history.statuses.items() if s == "failed")
    duplicated = sorted((w, s, k, n) for (w, s, k), n in history.effects.items() if n > 1)
    duplicated += sorted(
        (w, "<refused by its key>", marker, 2)
        for w, error in history.errors.items()
        for marker in DUPLICATE_KEY_ERRORS
        if marker in error
    )
    missing = sorted(
        (w, s, k)
        for w in completed
        for s, k in history.expected.get(w, ())
        if history.effects.get((w, s, k), 0) < 1
    )
    done = set(completed)
    stray = sorted(
        (w, s, k)
        for (w, s, k) in history.effects
        if w in done and w in history.expected and (s, k) not in history.expected[w]
    )
    wrong = sorted(
        w
        for w in completed
        if w in history.expected_outputs and history.outputs.get(w) != history.expected_outputs[w]
    )
    unacknowledged = sum(
        1 for i in history.statuses if i in history.attempted and i not in history.accepted
    )
    return Verdict(
        lost=lost,
        duplicated=duplicated,
        unexpected=unexpected,
        missing_effects=missing,
        stray_effects=stray,
        wrong_outputs=wrong,
        failed=failed,
        completed=len(completed),
        children=len(children),
        unacknowledged_started=unacknowledged,
    )


def _children(history: History) -> frozenset[str]:
    """Workflows started as children of ours (or of their children), under the id their
    parent step's attempt derives: expected, though no client started them."""
    known = set(history.attempted)
    found: set[str] = set()
    grew = True
    while grew:
        grew = False
        for child, parent in history.parents.items():
            if child not in found and parent.workflow_id in known and parent.names(child):
                found.add(child)
                known.add(child)
                grew = True
    return frozenset(found)


def stream_violation(seqs: Sequence[int], last_seq: int, ended: bool) -> str | None:
    """What is wrong with the event ids one subscriber saw across its reconnections, if any:
    each of 1..last_seq once, in order, ending with the terminal event."""
    if list(seqs) != list(range(1, len(seqs) + 1)):
        duplicates = len(seqs) - len(set(seqs))
        return f"out of order or gapped ({duplicates} duplicate(s)): {list(seqs)[:40]}"
    if len(seqs) != last_seq:
        return f"saw {len(seqs)} of {last_seq} events"
    if not ended:
        return "no terminal event"
    return None


def map_stream_violation(
    events: Sequence[tuple[str, str | None]], keys: frozenset[str], completed: bool
) -> str | None:
    """What is wrong with the (event, stepKey) pairs one subscriber saw of a mapped workflow,
    if anything: every item event names one of the workflow's items, and a completed map has
    reported its progress (`step.progress`) at least once."""
    strays = sorted(
        {
            key or "<none>"
            for event, key in events
            if event.startswith(ITEM_EVENT) and key not in keys
        }
    )
    if strays:
        return f"item events with stepKeys that are not items: {strays[:5]}"
    if completed and not any(event == PROGRESS_EVENT for event, _ in events):
        return "a completed map without a step.progress event"
    return None


def count_by(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


# -- approval ------------------------------------------------------------------------------

# The bodies whose effect `approval_ledger` counts, and the undo of each compensable step.
UNDO_OF = {"reserve": "release", "charge": "refund"}
# The stepKeys of a task's forward invocation and of its undo.
FORWARD_KEY = "0"
UNDO_KEY = "undo"


@dataclass(frozen=True, slots=True)
class ReceivedSignal:
    """A `signal.received` event of a run, as `workflow_events` holds it."""

    seq: int
    signal_id: str
    approved: bool | None
    by: str | None


@dataclass(frozen=True, slots=True)
class ApprovalRun:
    """What one `approval` run was sent and asked for, and what the database holds of it."""

    workflow_id: str
    fail_at: str | None
    # Every signal id the run's plan names (one per key), and those a send of which was
    # confirmed by the broker or accepted (202) by the gateway.
    planned_signals: frozenset[str]
    confirmed_signals: frozenset[str]
    status: str | None
    output: Any
    # Effect -> its count in `approval_ledger` (the step bodies' own rows).
    ledger: Mapping[str, int]
    # (step, stepKey) -> status of its row in `step_invocations` (the step service's).
    invocations: Mapping[tuple[str, str], str]
    # The `outcome` step's recorded output (the decision as the step service saw it).
    outcome: Any
    received: Sequence[ReceivedSignal]  # in seq order
    wait_started_seq: int | None  # `step.started` of `decision`
    # Of our signal ids, those the orchestrator's inbox took in (applied, or ignored as late).
    inboxed: frozenset[str]


@dataclass(slots=True)
class ApprovalVerdict:
    """Built up run by run (`judge_approvals`)."""

    # Confirmed or accepted signals that the orchestrator never took in.
    lost: list[tuple[str, str]] = field(default_factory=list)
    # (workflow, effect or "signal <id>", count) counted more than once.
    duplicated: list[tuple[str, str, int]] = field(default_factory=list)
    # (workflow, what): an effect the run should not have (an undo of a step that never
    # completed), a signal no one sent.
    unexpected: list[tuple[str, str]] = field(default_factory=list)
    missing_effects: list[tuple[str, str]] = field(default_factory=list)
    # (workflow, status, expected status) given its decision and failAt.
    wrong_status: list[tuple[str, str | None, str]] = field(default_factory=list)
    # Completed runs whose output or outcome step is not the decision they took.
    wrong_outputs: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    compensated_undos: int = 0
    signals_confirmed: int = 0
    signals_received: int = 0
    # Received before the wait began (kept, then taken) or while it waited.
    signals_before_wait: int = 0
    signals_while_waiting: int = 0
    # Confirmed and taken in, but the run had ended: ignored, as it should be.
    signals_after_end: int = 0


def expected_approval(fail_at: str | None, approved: bool | None) -> tuple[str, dict[str, int]]:
    """The status and `approval_ledger` effects of a run, given its `failAt` and the decision
    it took (the first signal it received; None: none)."""
    if fail_at == "reserve":
        return "failed", {}
    if approved is None:
        return "<a decision>", {"reserve": 1}
    if not approved:
        # `releaseRejected` gives the reservation back and the run completes (not an undo).
        return "completed", {"reserve": 1, "release": 1}
    if fail_at == "charge":
        return "compensated", {"reserve": 1, "release": 1}
    if fail_at == "notify":
        return "compensated", {"reserve": 1, "charge": 1, "refund": 1, "release": 1}
    return "completed", {"reserve": 1, "charge": 1, "notify": 1}


def judge_approvals(runs: Iterable[ApprovalRun]) -> ApprovalVerdict:
    verdict = ApprovalVerdict()
    for run in runs:
        _judge_approval(run, verdict)
    for name in ("lost", "duplicated", "unexpected", "missing_effects", "wrong_status"):
        getattr(verdict, name).sort()
    verdict.wrong_outputs.sort()
    return verdict


def _judge_approval(run: ApprovalRun, verdict: ApprovalVerdict) -> None:
    status = run.status or "<none>"
    verdict.statuses[status] = verdict.statuses.get(status, 0) + 1
    _judge_signals(run, verdict)
    # The decision the wait took: the first signal received (kept ones are taken oldest first).
    decision = run.received[0] if run.received and run.fail_at != "reserve" else None
    want_status, want_effects = expected_approval(
        run.fail_at, decision.approved if decision else None
    )
    if status != want_status:
        verdict.wrong_status.append((run.workflow_id, run.status, want_status))
    _judge_effects(run, want_effects, verdict)
    if status == "completed" and decision is not None:
        taken = {"approved": decision.approved, "by": decision.by}
        if run.output != taken or run.outcome != taken:
            verdict.wrong_outputs.append(run.workflow_id)


def _judge_signals(run: ApprovalRun, verdict: ApprovalVerdict) -> None:
    """Each signal id counted once, only ours, none that was confirmed dropped unseen."""
    wf = run.workflow_id
    counts = count_by(signal.signal_id for signal in run.received)
    verdict.duplicated.extend((wf, f"signal {s}", n) for s, n in counts.items() if n > 1)
    verdict.unexpected.extend((wf, f"signal {s}") for s in counts if s not in run.planned_signals)
    verdict.lost.extend((wf, s) for s in sorted(run.confirmed_signals - run.inboxed - set(counts)))
    verdict.signals_confirmed += len(run.confirmed_signals)
    verdict.signals_received += len(counts)
    verdict.signals_after_end += len((run.confirmed_signals & run.inboxed) - set(counts))
    for signal in run.received:
        if run.wait_started_seq is None or signal.seq < run.wait_started_seq:
            verdict.signals_before_wait += 1
        else:
            verdict.signals_while_waiting += 1


def _judge_effects(run: ApprovalRun, want: Mapping[str, int], verdict: ApprovalVerdict) -> None:
    """The step bodies' own ledger: each effect once, as the decision implies; no undo of a step
    that never completed (by the ledger and by the step service's rows); every completed
    compensable step of a compensated run undone."""
    wf = run.workflow_id
    for effect in sorted(set(run.ledger) | set(want)):
        count = run.ledger.get(effect, 0)
        if count > 1:
            verdict.duplicated.append((wf, effect, count))
        if count and not want.get(effect):
            verdict.unexpected.append((wf, effect))
        elif not count and want.get(effect):
            verdict.missing_effects.append((wf, effect))
    compensated = run.status == "compensated"
    for step, undo in UNDO_OF.items():
        if run.ledger.get(undo, 0) and not run.ledger.get(step, 0):
            verdict.unexpected.append((wf, f"{undo} without {step}"))
        undone = run.invocations.get((step, UNDO_KEY))
        if undone is not None and run.invocations.get((step, FORWARD_KEY)) != "succeeded":
            verdict.unexpected.append((wf, f"undo of {step}, which never succeeded"))
        if compensated and run.ledger.get(step) and undone != "succeeded":
            verdict.missing_effects.append((wf, f"undo of {step}"))
        verdict.compensated_undos += compensated and undone == "succeeded"
