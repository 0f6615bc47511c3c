"""What the chaos run submits, and what each workflow must leave behind once it has completed.

Most workflows are `ledgerFlow` (`tests.tools.ledger`: four counted steps). A fraction are
mapped: mostly `ledgerMap` (`tests.tools.ledger_map`: a map whose every item counts its effect
under its stepKey in the same ledger, so a duplicate shows as a 2), some `batchImport`
(`apps.batch_import`: one `imported_items` row per sku, half of them notifying through a child
`notification` workflow). Another fraction is `approval` (`apps.approval`: reserve, wait for a
`decision` signal, charge, cool down, notify; undone by `release` / `refund` when a later step
fails): each run is sent its decision once, or twice under one key, or under two keys (the
second sometimes disagreeing), at planned moments and over planned routes, and some are asked
(`failAt`) to fail after steps completed, so that compensation runs. The plan is a pure function
of the seed and the index, so a seed names the same workload whatever the timing.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from relayflow.contracts import workflow_id_for_key
from relayflow.model import ids
from tests.tools import ledger, ledger_map

BATCH_IMPORT = "batchImport"
BATCH_ITEM_STEP = "importItem"
# Its step queues (`summarize` is a local task: the orchestrator runs it, no queue).
BATCH_STEPS = ("importItem", "sendNotification")
# Where a notification's effect is counted: under its parent, since a child's id is not ours.
NOTIFY_STEP = "sendNotification"
# The stepKey of a step that is not a map's item.
TASK_KEY = "0"

APPROVAL = "approval"
DECISION = "decision"
# The bodies of `approval` (a step queue each: the undos `release` and `refund` too).
APPROVAL_BODIES = ("reserve", "release", "charge", "refund", "notify", "outcome")
# The steps `failAt` can name (`apps.approval.workflows.FailAt`).
FAIL_AT = ("reserve", "charge", "notify")

# The map steps whose invocations are items.
MAP_ITEM_STEPS = (ledger_map.ITEM_STEP, BATCH_ITEM_STEP)
MAPPED_NAMES = (ledger_map.WORKFLOW_NAME, BATCH_IMPORT)
# Every step queue the workload's commands travel on (captured, duplicated, drained).
STEP_QUEUES = (*ledger.STEP_NAMES, *ledger_map.STEP_NAMES, *BATCH_STEPS, *APPROVAL_BODIES)
WORKFLOW_NAMES = (ledger.WORKFLOW_NAME, ledger_map.WORKFLOW_NAME, BATCH_IMPORT, APPROVAL)


class Route(StrEnum):
    """How a signal is sent: the two paths users have."""

    BROKER = "broker"  # a SignalWorkflow published on `workflow.signal`
    GATEWAY = "gateway"  # POST /workflows/{id}/signals/decision


class Moment(StrEnum):
    """When a signal is sent, relative to its run."""

    # As soon as the run exists (its row is in the database): most likely before its wait.
    EARLY = "early"
    # Once its wait has begun (`step.started` of `decision`).
    WAITING = "waiting"
    # Right after the send before it was confirmed.
    NEXT = "next"


class Pattern(StrEnum):
    ONCE = "once"
    SAME_KEY_TWICE = "same-key-twice"
    TWO_KEYS = "two-keys"


@dataclass(frozen=True, slots=True)
class Mix:
    """How much of the workload is mapped, and how big a map is."""

    mapped: float = 0.2  # of all workflows
    approval: float = 0.15  # of all workflows
    batch_import: float = 0.34  # of the mapped ones; the others are ledgerMap
    min_items: int = 20
    max_items: int = 50


@dataclass(frozen=True, slots=True)
class Send:
    """One send of a decision: one signal (one key) is sent once, or twice over two sends."""

    key: str  # its Idempotency-Key; the message id is derived from it
    approved: bool
    by: str
    moment: Moment
    route: Route
    delay: float  # seconds after its moment

    def payload(self) -> dict[str, Any]:
        return {"approved": self.approved, "by": self.by}

    def signal_id(self, workflow_id: str) -> str:
        return ids.signal_id(workflow_id, DECISION, self.key)


@dataclass(frozen=True, slots=True)
class ApprovalPlan:
    pattern: Pattern
    fail_at: str | None
    sends: tuple[Send, ...]


@dataclass(frozen=True, slots=True)
class Planned:
    """One workflow to start: its name, idempotency key and input, and what a completed run of
    it must have committed exactly once and returned."""

    index: int
    name: str
    key: str
    input: dict[str, Any]
    # (step, stepKey) whose side effect a completed run committed exactly once.
    effects: frozenset[tuple[str, str]]
    output: Any
    # A mapped workflow's item keys, in item order (the stepKeys of its item events).
    item_keys: tuple[str, ...] = ()
    # An `approval` run's signals and failure (its effects depend on the decision it takes).
    approval: ApprovalPlan | None = None

    @property
    def workflow_id(self) -> str:
        return workflow_id_for_key(self.name, self.key)

    @property
    def mapped(self) -> bool:
        return self.name in MAPPED_NAMES

    @property
    def items(self) -> int:
        return len(self.item_keys)


def plan(seed: int, index: int, mix: Mix) -> Planned:
    rng = random.Random(f"{seed}:{index}")  # noqa: S311 - a workload, not a secret
    key = f"chaos-{seed}-{index}-{uuid.uuid4().hex[:8]}"
    kind = rng.random()
    if kind < mix.approval:
        return _approval(rng, index, key)
    if kind >= mix.approval + mix.mapped:
        return Planned(
            index=index,
            name=ledger.WORKFLOW_NAME,
            key=key,
            input={"tag": key},
            effects=frozenset((step, TASK_KEY) for step in ledger.STEP_NAMES),
            output=None,
        )
    count = rng.randint(mix.min_items, max(mix.min_items, mix.max_items))
    # Keys in shuffled order, so item order and key order differ: the output must follow items.
    order = list(range(count))
    rng.shuffle(order)
    if rng.random() < mix.batch_import:
        skus = [f"SKU-{n:04d}" for n in order]
        quantities = [rng.randint(0, 9) for _ in order]
        lines: list[dict[str, Any]] = [
            {"sku": sku, "qty": qty} for sku, qty in zip(skus, quantities, strict=True)
        ]
        notify = rng.random() < 0.5
        effects = {(BATCH_ITEM_STEP, sku) for sku in skus}
        if notify:
            effects.add((NOTIFY_STEP, TASK_KEY))
        return Planned(
            index=index,
            name=BATCH_IMPORT,
            key=key,
            input={"items": lines, "notify": notify},
            effects=frozenset(effects),
            output={"imported": count, "units": sum(quantities)},
            item_keys=tuple(skus),
        )
    keys = [f"k{n:04d}" for n in order]
    return Planned(
        index=index,
        name=ledger_map.WORKFLOW_NAME,
        key=key,
        input={"tag": key, "items": [{"key": k} for k in keys]},
        effects=frozenset(
            {(ledger_map.ITEM_STEP, k) for k in keys} | {(ledger_map.CLOSE_STEP, TASK_KEY)}
        ),
        output={"tag": key, "keys": keys},
        item_keys=tuple(keys),
    )


def _approval(rng: random.Random, index: int, key: str) -> Planned:
    """An `approval` run: a decision (approved 70 %), and one run in two asked to fail after
    steps completed (`notify`: after charge and its cooldown; `charge`: after reserve) or before
    any did (`reserve`)."""
    fail_at = rng.choices([None, "notify", "charge", "reserve"], weights=[50, 25, 15, 10])[0]
    pattern = rng.choice(list(Pattern))
    approved = rng.random() < 0.7

    def delay(moment: Moment) -> float:
        # Early ones go at once: the run reaches its wait within tens of milliseconds.
        return 0.0 if moment is Moment.EARLY else rng.uniform(0.0, 0.5)

    def send(n: int, moment: Moment, agrees: bool = True) -> Send:
        return Send(
            key=f"{key}-decision-{n}",
            approved=approved if agrees else not approved,
            by=f"chaos-{n}",
            moment=moment,
            route=rng.choice(list(Route)),
            delay=delay(moment),
        )

    first = send(1, rng.choice([Moment.EARLY, Moment.WAITING]))
    if pattern is Pattern.ONCE:
        sends: tuple[Send, ...] = (first,)
    elif pattern is Pattern.SAME_KEY_TWICE:
        # The same signal again (one key, one payload), maybe over the other route.
        moment = rng.choice(list(Moment))
        again = Send(
            first.key, first.approved, first.by, moment, rng.choice(list(Route)), delay(moment)
        )
        sends = (first, again)
    else:
        sends = (first, send(2, rng.choice(list(Moment)), agrees=rng.random() < 0.5))
    return Planned(
        index=index,
        name=APPROVAL,
        key=key,
        input={"requestId": key, "amount": rng.randint(1, 1000), "failAt": fail_at},
        # What it commits depends on the decision it takes: `chaos.checks.judge_approvals`.
        effects=frozenset(),
        output=None,
        approval=ApprovalPlan(pattern=pattern, fail_at=fail_at, sends=sends),
    )
