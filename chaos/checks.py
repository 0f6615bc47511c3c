"""The checks, as pure functions over what the run observed and what the database holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relayflow.model import ids

TERMINAL = frozenset({"completed", "failed", "cancelled"})
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
