"""What counts as a loopback bind (the only one the gateway may run open on) and the table of
what each route needs, without a server."""

from __future__ import annotations

import pytest

from relayflow.auth import Action
from services.gateway.access import action_for, is_loopback, is_public


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "localhost"])
def test_loopback_addresses(host: str) -> None:
    """Only these are reachable from this machine alone: open mode is allowed on them."""
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "localhost.example.com"],
)
def test_other_binds_are_not_loopback(host: str) -> None:
    """A wildcard, a LAN address or a name that may resolve anywhere must require keys."""
    assert not is_loopback(host)


def test_document_paths_map_to_the_routes_actions() -> None:
    """The OpenAPI document's paths (concrete workflow and signal names) find their route."""
    assert action_for("/workflows/formSubmission", "post") is Action.START
    assert action_for("/workflows/{workflowId}", "get") is Action.READ
    assert action_for("/workflows/{workflowId}/signals/decision", "post") is Action.SIGNAL
    assert action_for("/workflows/{workflowId}/cancel", "post") is Action.CANCEL
    assert action_for("/events", "get") is Action.STREAM
    with pytest.raises(LookupError):
        action_for("/workflows/{workflowId}/redrive", "post")


def test_only_probes_and_assets_are_public() -> None:
    """Everything else needs a key when keys are required."""
    assert all(map(is_public, ("/healthz", "/readyz", "/static/style.css")))
    assert not any(map(is_public, ("/", "/openapi.json", "/events", "/workflows")))
