"""What the chaos run submits, and what each workflow must leave behind once it has completed.

Most workflows are `ledgerFlow` (`tests.tools.ledger`: four counted steps). A fraction are
mapped: mostly `ledgerMap` (`tests.tools.ledger_map`: a map whose every item counts its effect
under its stepKey in the same ledger, so a duplicate shows as a 2), some `batchImport`
(`apps.batch_import`: one `imported_items` row per sku, half of them notifying through a child
`notification` workflow). The plan is a pure function of the seed and the index, so a seed
names the same workload whatever the timing.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from relayflow.contracts import workflow_id_for_key
from tests.tools import ledger, ledger_map

BATCH_IMPORT = "batchImport"
BATCH_ITEM_STEP = "importItem"
BATCH_STEPS = ("importItem", "summarize", "sendNotification")
# Where a notification's effect is counted: under its parent, since a child's id is not ours.
NOTIFY_STEP = "sendNotification"
# The stepKey of a step that is not a map's item.
TASK_KEY = "0"

# The map steps whose invocations are items.
MAP_ITEM_STEPS = (ledger_map.ITEM_STEP, BATCH_ITEM_STEP)
# Every step queue the workload's commands travel on (captured, duplicated, drained).
STEP_QUEUES = (*ledger.STEP_NAMES, *ledger_map.STEP_NAMES, *BATCH_STEPS)
WORKFLOW_NAMES = (ledger.WORKFLOW_NAME, ledger_map.WORKFLOW_NAME, BATCH_IMPORT)


@dataclass(frozen=True, slots=True)
class Mix:
    """How much of the workload is mapped, and how big a map is."""

    mapped: float = 0.2  # of all workflows
    batch_import: float = 0.34  # of the mapped ones; the others are ledgerMap
    min_items: int = 20
    max_items: int = 50


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

    @property
    def workflow_id(self) -> str:
        return workflow_id_for_key(self.name, self.key)

    @property
    def mapped(self) -> bool:
        return self.name != ledger.WORKFLOW_NAME

    @property
    def items(self) -> int:
        return len(self.item_keys)


def plan(seed: int, index: int, mix: Mix) -> Planned:
    rng = random.Random(f"{seed}:{index}")  # noqa: S311 - a workload, not a secret
    key = f"chaos-{seed}-{index}-{uuid.uuid4().hex[:8]}"
    if rng.random() >= mix.mapped:
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
