"""Settings of the external-system stand-in (environment, prefix `RELAYFLOW_`)."""

from __future__ import annotations

from pydantic import Field

from relayflow.settings import Settings


class ExternalSettings(Settings):
    # Seconds to wait before replying, to play a slow system (RELAYFLOW_EXTERNAL_REPLY_DELAY).
    external_reply_delay: float = Field(default=0.0, ge=0)
    # Requests handled at once.
    external_prefetch: int = Field(default=64, ge=1)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
