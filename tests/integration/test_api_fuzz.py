"""The API fuzzed against its own OpenAPI document (schemathesis), with credentials, as CI
runs it on every build (bounded, a fixed seed): no server error, no response or header that the
document does not describe, no request that needs a key succeeding without one.

Also checked: an undocumented method is a 405 whose `Allow` lists exactly the documented
methods, and what a request created or removed behaves so. Two checks are not run, because what
they ask cannot be right for this API: `negative_data_rejection` wants an unknown request header
refused (HTTP lets proxies and clients add any), and `positive_data_acceptance` wants any string
accepted as the list's `before`, an opaque cursor no schema can describe."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from relayflow.auth import AuthSettings, KeyHasher, Role, create_key, revoke_key
from relayflow.settings import Settings
from tests.integration.gateway_harness import running_gateway
from tests.support import unique_name

SECRET = SecretStr("fuzz-secret-fuzz-secret-fuzz-secret-0123")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "missing_required_header",
        "ignored_auth",
        "unsupported_method",
        "allow_header_conformance",
        "use_after_free",
        "ensure_resource_availability",
        "object_level_authorization",
    ]
)


@pytest.fixture
async def admin_key(pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    async with pool.acquire() as conn:
        created = await create_key(
            conn, KeyHasher.from_secret(SECRET), tenant=unique_name("fuzz-"), role=Role.ADMIN
        )
    yield created.key
    async with pool.acquire() as conn:
        await revoke_key(conn, created.record.id)


@pytest.mark.timeout(600)
async def test_the_api_matches_its_document_under_fuzzing(
    settings: Settings, admin_key: str, tmp_path: Path
) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency (pyproject.toml)"
    async with running_gateway(settings, AuthSettings(secret=SECRET), auth="required") as gateway:
        process = await asyncio.create_subprocess_exec(
            st,
            "--no-color",
            "run",
            f"{gateway.base_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {admin_key}",
            "--checks",
            CHECKS,
            "--max-examples",
            "5",
            "--seed",
            "1",
            # An event stream stays open: it is read for this long, then cut.
            "--request-timeout",
            "0.5",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
    assert "Tested: " in report
