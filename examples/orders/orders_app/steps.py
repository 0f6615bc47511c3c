"""The step bodies of `order`. Those that write do so on `ctx.connection`, inside the transaction
that records their success (`transactional=True`): a redelivered command finds the success
recorded and writes nothing again."""

from __future__ import annotations

from orders_app.workflows import (
    Line,
    Order,
    Payment,
    Priced,
    Reservation,
    Reserved,
    Shipment,
)
from relayflow.db.queries import Queries
from relayflow.errors import StepError
from relayflow.steps import StepContext, StepRegistry

# The migration set: orders_app/migrations, applied by the services that serve these bodies.
steps = StepRegistry(migrations=["orders_app"])
SQL = Queries.load("orders_app")

MAX_TOTAL = 1_000_000  # cents, per order
SHIPS_TO = frozenset({"DE", "FR", "GB", "NL", "US"})
DECLINED_CARD = "tok_declined"


@steps.step("validate")
async def validate(ctx: StepContext[Order]) -> Priced:
    total = sum(line.qty * line.unit_price for line in ctx.input.items)
    if total > MAX_TOTAL:
        raise StepError(
            f"order total {total} exceeds {MAX_TOTAL}", type="OrderTooLarge", non_retryable=True
        )
    return Priced(total=total, units=sum(line.qty for line in ctx.input.items))


@steps.step("reserveStock", transactional=True)
async def reserve_stock(ctx: StepContext[Line]) -> Reserved:
    await ctx.connection.execute(SQL.reserve, ctx.workflow_id, ctx.input.sku, ctx.input.qty)
    return Reserved(sku=ctx.input.sku, qty=ctx.input.qty)


@steps.step("holdReservation", reads=[reserve_stock])
async def hold_reservation(ctx: StepContext[Order]) -> Reservation:
    reserved = [line for line in ctx.items(reserve_stock) if line is not None]
    return Reservation(units=sum(line.qty for line in reserved), skus=[r.sku for r in reserved])


@steps.step("releaseStock", transactional=True)
async def release_stock(ctx: StepContext[Order]) -> dict[str, bool]:
    await ctx.connection.execute(SQL.release, ctx.workflow_id)
    return {"released": True}


@steps.step("charge", transactional=True, reads=[validate])
async def charge(ctx: StepContext[Order]) -> Payment:
    if ctx.input.card == DECLINED_CARD:
        raise StepError("the card was declined", type="CardDeclined", non_retryable=True)
    amount = ctx.output(validate).total
    await ctx.connection.execute(SQL.charge, ctx.workflow_id, ctx.input.order_id, amount)
    return Payment(payment=f"pay-{ctx.workflow_id}", amount=amount)


@steps.step("refund", transactional=True, reads=[charge])
async def refund(ctx: StepContext[Order]) -> dict[str, str]:
    await ctx.connection.execute(SQL.refund, ctx.workflow_id)
    return {"refunded": ctx.output(charge).payment}


@steps.step("ship", transactional=True, reads=[charge, hold_reservation])
async def ship(ctx: StepContext[Order]) -> Shipment:
    if ctx.input.country not in SHIPS_TO:
        raise StepError(
            f"no carrier ships to {ctx.input.country}", type="Undeliverable", non_retryable=True
        )
    units = ctx.output(hold_reservation).units
    tracking = f"trk-{ctx.workflow_id}"
    await ctx.connection.execute(
        SQL.ship, ctx.workflow_id, ctx.input.order_id, ctx.input.country, units, tracking
    )
    return Shipment(tracking=tracking, payment=ctx.output(charge).payment, units=units)
