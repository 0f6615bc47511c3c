"""The retention windows' rule, checked when the orchestrator's settings are read: every window
covers the broker's redelivery horizon (else a late copy of a message would be news again),
and Idempotency-Keys are kept at least as long as workflows; 0 is forever."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relayflow.orchestration.retention import WEEK, redelivery_horizon
from services.orchestrator.settings import OrchestratorSettings


def test_the_defaults_keep_the_rule() -> None:
    """A week of everything, against a horizon of about ten minutes (20 deliveries x 30 s)."""
    settings = OrchestratorSettings()
    assert settings.retention.windows.workflows == WEEK
    assert settings.redelivery_horizon.seconds == 20 * 30 + 5 + 1


@pytest.mark.parametrize("kind", ["inbox", "invocations", "workflows"])
def test_a_window_shorter_than_the_horizon_is_refused_by_name(kind: str) -> None:
    """An operator who sets a window below the horizon learns which setting, and the horizon."""
    with pytest.raises(ValidationError) as raised:
        OrchestratorSettings.model_validate({f"retention_{kind}_seconds": 60})
    message = str(raised.value)
    assert f"RELAYFLOW_RETENTION_{kind.upper()}_SECONDS=60" in message
    assert "606 s" in message
    assert "RELAYFLOW_DELIVERY_LIMIT=20" in message


def test_keys_shorter_than_workflows_are_refused() -> None:
    """Keys past their window whose run is kept would be read again by every batch."""
    with pytest.raises(ValidationError, match="RELAYFLOW_RETENTION_KEYS_SECONDS=3600"):
        OrchestratorSettings(retention_keys_seconds=3600)
    with pytest.raises(ValidationError, match="RELAYFLOW_RETENTION_KEYS_SECONDS"):
        OrchestratorSettings(retention_workflows_seconds=0)  # runs forever, keys a week


def test_forever_and_a_shorter_horizon_are_accepted() -> None:
    """0 keeps a kind for ever; a lower delivery limit shortens the horizon, and the windows."""
    forever = OrchestratorSettings(
        retention_workflows_seconds=0,
        retention_keys_seconds=0,
        retention_inbox_seconds=0,
        retention_invocations_seconds=0,
    )
    assert forever.retention.windows.inbox == 0
    short = OrchestratorSettings(
        delivery_limit=2,
        retention_workflows_seconds=70,
        retention_inbox_seconds=70,
        retention_invocations_seconds=70,
        retention_keys_seconds=70,
    )
    # 6 deferrals from 1 s (61 s) outlast 2 deliveries x 30 s.
    assert short.redelivery_horizon.seconds == 61 + 5 + 1


def test_long_deferrals_lengthen_the_horizon() -> None:
    """The orchestrator's deferral of a signal that overtook its start counts when it is the
    longer wait (here 15 deferrals from 10 s, against 2 deliveries)."""
    horizon = redelivery_horizon(
        delivery_limit=2,
        outbox_stale_after=5,
        outbox_sweep_interval=1,
        defer_first=10,
        defer_limit=15,
    )
    assert horizon.seconds == 10 + 20 + 13 * 30 + 6
    assert "deferrals" in horizon.terms
