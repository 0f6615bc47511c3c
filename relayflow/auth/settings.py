"""Settings of authentication, read from the environment (`RELAYFLOW_AUTH_…`)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAYFLOW_AUTH_", extra="ignore", frozen=True)

    # RELAYFLOW_AUTH_SECRET: what API keys are hashed under (`relayflow.auth.keys`); the gateway
    # and `relayflow keys` need the same one. A SecretStr: it never shows in a repr or a log.
    secret: SecretStr | None = None
