"""The Python bodies of `quote`: the two local tasks around the foreign `price` step."""

from __future__ import annotations

from apps.quote.workflows import Normalized, Offer, Priced, QuoteRequest
from relayflow.steps import StepContext, StepRegistry

steps = StepRegistry()


@steps.step("normalize")
async def normalize(ctx: StepContext[QuoteRequest]) -> Normalized:
    """The currency in upper case and the lines in sku order: the pricing service reads this,
    not the raw input, so it never sees `eur` for `EUR`."""
    request = ctx.input
    return Normalized(
        currency=request.currency.upper(), lines=sorted(request.items, key=lambda line: line.sku)
    )


@steps.step("offer")
async def offer(ctx: StepContext[QuoteRequest]) -> Offer:
    # `price` has no Python body to declare its type (`reads=`), so its output is checked here,
    # as any foreign answer should be.
    priced = Priced.model_validate(ctx.dependencies["price"])
    euros, cents = divmod(priced.total_cents, 100)
    return Offer(
        quote_id=ctx.workflow_id,
        total_cents=priced.total_cents,
        currency=priced.currency,
        priced_by=priced.priced_by,
        text=f"{priced.units} units in {priced.lines} lines: {euros}.{cents:02d} {priced.currency}",
    )
