"""`quote`'s Python side (`apps/quote`), with a stand-in for the foreign `price` step: what
`normalize` hands the foreign service in `dependencies`, and how `offer` takes its answer."""

from __future__ import annotations

from typing import Any

from apps.quote.steps import steps as quote_steps
from apps.quote.workflows import QUOTE
from relayflow.model import WorkflowStatus
from relayflow.steps import StepContext, StepRegistry
from relayflow.testing import WorkflowTestEnv


def with_stand_in(answer: dict[str, Any], seen: list[dict[str, Any]]) -> StepRegistry:
    """quote's bodies, and a `price` in Python that answers `answer` and keeps what it was
    given in `seen`, one per attempt."""
    registry = StepRegistry(quote_steps)

    @registry.step("price")
    async def price(ctx: StepContext[dict[str, Any]]) -> dict[str, Any]:
        seen.append(dict(ctx.dependencies))
        return answer

    return registry


async def test_the_foreign_step_reads_normalized_lines_and_offer_formats_its_answer() -> None:
    """`price` sees the currency in upper case and the lines in sku order, by step name in
    `dependencies` (as the README documents for a foreign service); `offer` checks its answer
    and turns it into the workflow's output."""
    seen: list[dict[str, Any]] = []
    answer = {"currency": "EUR", "lines": 2, "units": 4, "totalCents": 1750, "pricedBy": "stub"}
    env = WorkflowTestEnv([QUOTE], with_stand_in(answer, seen))
    lines = [
        {"sku": "B-2", "qty": 1, "unitCents": 1000},
        {"sku": "A-1", "qty": 3, "unitCents": 250},
    ]
    run = await env.start("quote", {"currency": "eur", "items": lines})
    state = await env.run(run)
    assert state.status is WorkflowStatus.COMPLETED
    assert seen == [{"normalize": {"currency": "EUR", "lines": [lines[1], lines[0]]}}]
    assert state.output == {
        "quoteId": run,
        "totalCents": 1750,
        "currency": "EUR",
        "pricedBy": "stub",
        "text": "4 units in 2 lines: 17.50 EUR",
    }


async def test_an_answer_of_the_wrong_shape_fails_offer() -> None:
    """A foreign answer is checked where Python reads it: `offer` refuses one without its
    fields instead of producing a half offer."""
    env = WorkflowTestEnv([QUOTE], with_stand_in({"total": 5}, []))
    run = await env.start(
        "quote", {"currency": "EUR", "items": [{"sku": "A", "qty": 1, "unitCents": 5}]}
    )
    state = await env.run(run)
    assert state.status is WorkflowStatus.FAILED
    error = state.steps["offer"].error
    assert error is not None
    assert error["type"] == "ValidationError"
