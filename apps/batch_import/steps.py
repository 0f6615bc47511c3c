"""The step bodies of `batchImport` and `notification`."""

from __future__ import annotations

from typing import Any

from apps.batch_import.workflows import Imported, Line, NotificationInput, Sent, Summary
from relayflow.steps import StepContext, StepRegistry

steps = StepRegistry(migrations=["apps.batch_import"])


@steps.step("importItem", transactional=True)
async def import_item(ctx: StepContext[Line]) -> Imported:
    """One line, one row, committed with the record of this step's success: a redelivered or
    re-dispatched command finds the success recorded and never inserts again (and if it ever
    did, the primary key would refuse it, loudly)."""
    line = ctx.input
    await ctx.connection.execute(
        "INSERT INTO imported_items (workflow_id, sku, qty, item_index) VALUES ($1, $2, $3, $4)",
        ctx.workflow_id,
        line.sku,
        line.qty,
        ctx.item_index,
    )
    return Imported(sku=line.sku, qty=line.qty)


@steps.step("summarize", reads=[import_item])
async def summarize(ctx: StepContext[dict[str, Any]]) -> Summary:
    # The map's output, typed as importItem declares it: one Imported per line, in order.
    imported = [line for line in ctx.items(import_item) if line is not None]
    return Summary(imported=len(imported), units=sum(line.qty for line in imported))


@steps.step("sendNotification", transactional=True)
async def send_notification(ctx: StepContext[NotificationInput]) -> Sent:
    await ctx.connection.execute(
        "INSERT INTO import_notifications (workflow_id, message) VALUES ($1, $2)",
        ctx.workflow_id,
        ctx.input.message,
    )
    return Sent(message=ctx.input.message)
