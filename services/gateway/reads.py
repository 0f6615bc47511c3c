"""Where the gateway's reads go: a read replica (`RELAYFLOW_READ_DATABASE_URL`) where its lag
cannot mislead a client, the primary (`DATABASE_URL`) where it could.

A replica shows the primary as it was a moment ago: every commit up to the WAL it has replayed,
in commit order. So its answers are past answers of the primary, never made-up ones, and:

- lists, details and timelines come from the replica, older by at most its lag — except that a
  workflow the replica does not know yet is looked up on the primary before the gateway answers
  404 (a client that has just been answered 202 asks for its workflow at once);
- an event stream's replay ("the events after seq N") comes from the replica only when the
  replica has replayed the primary's WAL up to a position taken on the primary just before
  (`GatewayStore.events_after_if_replayed`), else from the primary. An event is committed before
  it is published, and the stream subscribes to live events before it first reads, so every
  event is either committed at or below that position — and then the replica has it — or
  committed after it and comes live (or, if that live copy is lost, at the next read, which
  takes a new position). A replica that lags therefore costs a read on the primary, never an
  event. Checking the lag against a fixed bound instead would let a replica that stalled just
  under it answer "nothing new" for events the client must get.
- what the gateway decides from an absence — the 204 that ends a finished stream for good, the
  `workflow.unknown` that ends a stream for a workflow that never appeared — is read on the
  primary, as is all that writes or checks credentials.

Without a read URL the primary serves all of it (`Reads.store` is then the primary's store).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.store import GatewayStore, StoredEvent, WorkflowRow


@dataclass(frozen=True, slots=True)
class Reads:
    primary: GatewayStore
    replica: GatewayStore | None = None

    @property
    def store(self) -> GatewayStore:
        """For reads whose answer may be a replica's lag old: lists, pages, items."""
        return self.replica or self.primary

    async def get_workflow(self, workflow_id: str, tenant: str | None) -> WorkflowRow | None:
        """The replica's row, or the primary's when the replica has none (yet)."""
        if self.replica is not None:
            row = await self.replica.get_workflow(workflow_id, tenant)
            if row is not None:
                return row
        return await self.primary.get_workflow(workflow_id, tenant)

    async def events_after(
        self, workflow_id: str, after_seq: int, tenant: str | None, *, limit: int = 1000
    ) -> list[StoredEvent]:
        """Every committed event after `after_seq` (up to `limit`), as the primary would
        answer now; from the replica when it has caught up with the primary."""
        if self.replica is not None:
            fence = await self.primary.wal_position()
            rows = await self.replica.events_after_if_replayed(
                fence, workflow_id, after_seq, tenant, limit=limit
            )
            if rows is not None:
                return rows
        return await self.primary.events_after(workflow_id, after_seq, tenant, limit=limit)

    async def workflow_exists(self, workflow_id: str, tenant: str | None) -> bool:
        """On the primary: a "no" ends a stream."""
        return await self.primary.workflow_exists(workflow_id, tenant)
