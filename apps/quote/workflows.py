"""The definition of `quote`: `normalize` (local) → `price` (a foreign service) → `offer`
(local)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from relayflow.workflow import RetryPolicy, WorkflowDefinition, define_workflow, task

MAX_LINES = 1000
# Start-to-close of one attempt of the foreign step; an attempt past it fails with StepTimeout
# and is retried by the policy (its late answer is then ignored as stale).
PRICE_TIMEOUT = timedelta(seconds=60)


class QuoteLine(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sku: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")]
    qty: Annotated[int, Field(ge=1, le=1_000_000)]
    unit_cents: Annotated[int, Field(alias="unitCents", ge=0, le=100_000_000)]


class QuoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Any ISO 4217-shaped code, in either case; which ones can be priced is the pricing
    # service's business (it refuses the others for good: `UnsupportedCurrency`).
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")]
    items: Annotated[list[QuoteLine], Field(min_length=1, max_length=MAX_LINES)]


class Normalized(BaseModel):
    """`normalize`'s output: what `price` reads, as `dependencies.normalize` of its command."""

    model_config = ConfigDict(populate_by_name=True)

    currency: str
    lines: list[QuoteLine]


class Priced(BaseModel):
    """What the foreign `price` step answers, as its StepResult's `output`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    currency: str
    lines: Annotated[int, Field(ge=0)]
    units: Annotated[int, Field(ge=0)]
    total_cents: Annotated[int, Field(alias="totalCents", ge=0)]
    # Which program priced it (`node`, `pika`): shows in the output who served the step.
    priced_by: Annotated[str, Field(alias="pricedBy", min_length=1, max_length=64)]


class Offer(BaseModel):
    """`offer`'s output: the workflow's output."""

    model_config = ConfigDict(populate_by_name=True)

    quote_id: Annotated[str, Field(alias="quoteId")]
    total_cents: Annotated[int, Field(alias="totalCents")]
    currency: str
    priced_by: Annotated[str, Field(alias="pricedBy")]
    text: str


QUOTE: WorkflowDefinition = define_workflow(
    "quote",
    input_model=QuoteRequest,
    steps=[
        task("normalize", local=True),
        # No Python body anywhere: served from the queue `<ns>.step.price` by another program.
        task("price", after=["normalize"], timeout=PRICE_TIMEOUT),
        task("offer", local=True, after=["price"]),
    ],
    output_from="offer",
    retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=500)),
)

WORKFLOWS = [QUOTE]
