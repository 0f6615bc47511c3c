"""The checks, as pure functions over what the run observed and what the database holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class History:
    """What the clients saw and what the system holds at the end."""

    attempted: frozenset[str]  # workflow ids we tried to start (derived from our keys)
    accepted: frozenset[str]  # ids the gateway answered 202 for
    statuses: Mapping[str, str]  # every workflow in the database and its status
    effects: Mapping[tuple[str, str], int]  # (workflow, step) -> committed side effects
    steps: Sequence[str]  # the side-effecting steps each completed workflow must have run


@dataclass(frozen=True, slots=True)
class Verdict:
    lost: list[str] = field(default_factory=list)
    duplicated: list[tuple[str, str, int]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing_effects: list[tuple[str, str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    completed: int = 0
    # Started by a submission that got no 202 (a 503 or a broken connection): allowed, counted.
    unacknowledged_started: int = 0


def judge(history: History) -> Verdict:
    lost = sorted(i for i in history.accepted if history.statuses.get(i) not in TERMINAL)
    unexpected = sorted(i for i in history.statuses if i not in history.attempted)
    completed = [i for i, s in history.statuses.items() if s == "completed"]
    failed = sorted(i for i, s in history.statuses.items() if s == "failed")
    duplicated = sorted((w, s, n) for (w, s), n in history.effects.items() if n > 1)
    missing = sorted(
        (w, s) for w in completed for s in history.steps if history.effects.get((w, s), 0) < 1
    )
    unacknowledged = sum(
        1 for i in history.statuses if i in history.attempted and i not in history.accepted
    )
    return Verdict(
        lost=lost,
        duplicated=duplicated,
        unexpected=unexpected,
        missing_effects=missing,
        failed=failed,
        completed=len(completed),
        unacknowledged_started=unacknowledged,
    )


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


def count_by(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))
