"""The step bodies of `approval`: each counts its effect in `approval_ledger`, in the
transaction that records its success."""

from __future__ import annotations

from typing import Any

from apps.approval.workflows import ApprovalRequest
from relayflow.errors import StepError
from relayflow.steps import DbConnection, StepContext, StepRegistry

steps = StepRegistry(migrations=["apps.approval"])

_COUNT = """
INSERT INTO approval_ledger (workflow_id, effect, count) VALUES ($1, $2, 1)
ON CONFLICT (workflow_id, effect) DO UPDATE
SET count = approval_ledger.count + 1, updated_at = now()
"""


async def _effect(ctx: StepContext[ApprovalRequest], effect: str) -> None:
    if ctx.input.fail_at == ctx.step_name and ctx.step_key != "undo":
        raise StepError(f"{ctx.step_name} fails on request (failAt)", non_retryable=True)
    connection: DbConnection = ctx.connection
    await connection.execute(_COUNT, ctx.workflow_id, effect)


@steps.step("reserve", transactional=True)
async def reserve(ctx: StepContext[ApprovalRequest]) -> dict[str, Any]:
    await _effect(ctx, "reserve")
    return {"reservation": f"res-{ctx.input.request_id}", "amount": ctx.input.amount}


@steps.step("release", transactional=True)
async def release(ctx: StepContext[ApprovalRequest]) -> dict[str, Any]:
    await _effect(ctx, "release")
    return {"released": f"res-{ctx.input.request_id}"}


@steps.step("charge", transactional=True)
async def charge(ctx: StepContext[ApprovalRequest]) -> dict[str, Any]:
    await _effect(ctx, "charge")
    return {"charged": ctx.input.amount}


@steps.step("refund", transactional=True)
async def refund(ctx: StepContext[ApprovalRequest]) -> dict[str, Any]:
    await _effect(ctx, "refund")
    return {"refunded": ctx.dependencies["charge"]["charged"]}


@steps.step("notify", transactional=True)
async def notify(ctx: StepContext[ApprovalRequest]) -> dict[str, Any]:
    await _effect(ctx, "notify")
    return {"notified": True}


@steps.step("outcome")
async def outcome(ctx: StepContext[ApprovalRequest]) -> dict[str, Any]:
    decision = ctx.dependencies["decision"] or {}
    return {"approved": bool(decision.get("approved")), "by": decision.get("by")}
