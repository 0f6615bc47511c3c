"""The definitions of `batchImport` and its child `notification`."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relayflow.workflow import (
    Given,
    RetryPolicy,
    WorkflowDefinition,
    child,
    define_workflow,
    map_step,
    task,
)

MAX_ITEMS = 10_000
STEP_TIMEOUT = timedelta(seconds=60)
RETRY = RetryPolicy(max_attempts=5, initial_interval=timedelta(milliseconds=500))


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    sku: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")]
    qty: Annotated[int, Field(ge=0, le=1_000_000_000)]


class BatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[Line], Field(min_length=1, max_length=MAX_ITEMS)]
    notify: bool = False

    @field_validator("items")
    @classmethod
    def _unique_skus(cls, items: list[Line]) -> list[Line]:
        seen: set[str] = set()
        for index, line in enumerate(items):
            if line.sku in seen:
                raise ValueError(f"item {index} repeats sku {line.sku!r}; each sku once")
            seen.add(line.sku)
        return items


class Imported(BaseModel):
    """`importItem`'s output, one per line."""

    sku: str
    qty: int


class Summary(BaseModel):
    """`summarize`'s output: the workflow's output."""

    imported: int
    units: int


class NotificationInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: Annotated[str, Field(min_length=1, max_length=1000)]


class Sent(BaseModel):
    message: str


NOTIFICATION: WorkflowDefinition = define_workflow(
    "notification",
    input_model=NotificationInput,
    steps=[task("sendNotification", timeout=STEP_TIMEOUT)],
    output_from="sendNotification",
    retry=RETRY,
)


def _notification(given: Given) -> dict[str, Any]:
    summary = given.output("summarize")
    return {"message": f"imported {summary['imported']} lines, {summary['units']} units"}


BATCH_IMPORT: WorkflowDefinition = define_workflow(
    "batchImport",
    input_model=BatchInput,
    steps=[
        # Keyed by sku (unique in a batch): the stepKey, the item's row and its retries agree.
        map_step(
            "importItem",
            over="input.items",
            max_concurrency=8,
            max_items=MAX_ITEMS,
            key=lambda line: str(line["sku"]),
            timeout=STEP_TIMEOUT,
        ),
        # Light mapping of the map's output: run inside the orchestrator (a local task).
        task("summarize", local=True, after=["importItem"]),
        child(
            "notifyOwner",
            workflow=NOTIFICATION,
            after=["summarize"],
            when=lambda given: bool(given.input.get("notify")),
            input=_notification,
        ),
    ],
    output_from="summarize",
    retry=RETRY,
)

WORKFLOWS = [BATCH_IMPORT, NOTIFICATION]
