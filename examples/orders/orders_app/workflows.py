"""The definition of `order` and the models its steps exchange."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from relayflow.workflow import RetryPolicy, WorkflowDefinition, define_workflow, map_step, task

MAX_ITEMS = 100
STEP_TIMEOUT = timedelta(seconds=30)


class Line(BaseModel):
    """One line of an order: what `reserveStock` sees as its input, item by item."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sku: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    qty: Annotated[int, Field(ge=1, le=1000)]
    # In cents.
    unit_price: Annotated[int, Field(alias="unitPrice", ge=0, le=10_000_000)]


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    order_id: Annotated[str, Field(alias="orderId", min_length=1, max_length=64)]
    items: Annotated[list[Line], Field(min_length=1, max_length=MAX_ITEMS)]
    # A payment token; the stand-in payment provider declines `tok_declined`.
    card: Annotated[str, Field(min_length=1, max_length=64)]
    # ISO 3166 alpha-2; the stand-in carrier ships to SHIPS_TO only.
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]

    @field_validator("items")
    @classmethod
    def _one_line_per_sku(cls, items: list[Line]) -> list[Line]:
        # reserveStock is keyed by sku: two lines of one sku would be one reservation.
        skus = [line.sku for line in items]
        repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
        if repeated:
            raise ValueError(f"each sku once per order; repeated: {repeated}")
        return items


class Priced(BaseModel):
    """`validate`'s output."""

    total: int
    units: int


class Reserved(BaseModel):
    """`reserveStock`'s output, one per line."""

    sku: str
    qty: int


class Reservation(BaseModel):
    """`holdReservation`'s output: the whole reservation, which `releaseStock` undoes."""

    units: int
    skus: list[str]


class Payment(BaseModel):
    """`charge`'s output."""

    payment: str
    amount: int


class Shipment(BaseModel):
    """`ship`'s output: the workflow's output."""

    tracking: str
    payment: str
    units: int


ORDER: WorkflowDefinition = define_workflow(
    "order",
    input_model=Order,
    steps=[
        # Light checks on the input alone: run inside the orchestrator, no broker hop.
        task("validate", local=True),
        # One invocation per line, at most 4 at once; stepKey = sku, so a line's retries and
        # its row agree.
        map_step(
            "reserveStock",
            over="input.items",
            after=["validate"],
            key=lambda line: str(line["sku"]),
            max_concurrency=4,
            max_items=MAX_ITEMS,
            timeout=STEP_TIMEOUT,
        ),
        # A map step has no undo of its own: this step stands for the whole reservation, and
        # its undo (`releaseStock`, in a step service) releases every line of it.
        task("holdReservation", local=True, after=["reserveStock"], compensate="releaseStock"),
        task(
            "charge",
            after=["holdReservation"],
            compensate="refund",
            timeout=STEP_TIMEOUT,
            retry=RetryPolicy(
                max_attempts=5,
                initial_interval=timedelta(milliseconds=200),
                non_retryable_errors=frozenset({"CardDeclined"}),
            ),
        ),
        task("ship", after=["charge"], timeout=STEP_TIMEOUT),
    ],
    output_from="ship",
    retry=RetryPolicy(max_attempts=5, initial_interval=timedelta(milliseconds=200)),
    timeout=timedelta(hours=1),
)

WORKFLOWS = [ORDER]
