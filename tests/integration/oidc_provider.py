"""A small OpenID Connect provider on a loopback port, standing in for a real identity provider
in the gateway's OIDC tests: discovery, a JWKS of RSA keys made at fixture time (rotatable),
an /authorize that approves the configured person at once, and a /token that trades a code for
a signed id token only with the right PKCE verifier. It counts JWKS fetches, so that tests see
the gateway's cache and its rate limit."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support import wait_for

CLIENT_ID = "relayflow-dashboard"
AUDIENCE = "relayflow-api"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def new(cls) -> SigningKey:
        return cls(secrets.token_hex(8), rsa.generate_private_key(65537, 2048))

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key())
        )
        return {**data, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass
class Grant:
    redirect_uri: str
    challenge: str
    nonce: str


@dataclass
class Provider:
    """What the stand-in serves and has seen; `person` holds the claims the approved person's
    id token carries (besides iss, aud, sub, exp, iat, nonce)."""

    issuer: str = ""
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.new()])
    subject: str = "person-1"
    person: dict[str, Any] = field(
        default_factory=lambda: {"relayflow_tenant": "acme", "relayflow_role": ["operator"]}
    )
    id_token_seconds: int = 600
    jwks_fetches: int = 0
    codes: dict[str, Grant] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every id token /token gave out

    @property
    def key(self) -> SigningKey:
        return self.keys[0]

    def rotate(self) -> SigningKey:
        """A new signing key, the only one served from now on."""
        self.keys = [SigningKey.new()]
        return self.key

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.issuer, "aud": AUDIENCE, "sub": self.subject, "iat": now}
        return {**base, "exp": now + 300, **self.person, **overrides}

    def token(self, *, kid: str | None = None, key: SigningKey | None = None, **claims: Any) -> str:
        """An access token signed by the current key (or `key`), with `claims` over the defaults."""
        signer = key or self.key
        headers = {"kid": kid or signer.kid}
        return jwt.encode(self.claims(**claims), signer.private, algorithm="RS256", headers=headers)

    def unsigned(self, **claims: Any) -> str:
        """`alg: none`: no signature at all."""
        header = _b64(json.dumps({"alg": "none", "kid": self.key.kid}).encode())
        body = _b64(json.dumps(self.claims(**claims)).encode())
        return f"{header}.{body}."

    def hmac_with_public_key(self, **claims: Any) -> str:
        """HS256 keyed with the public key: the classic confusion that lets anyone sign."""
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.key.kid}).encode())
        body = _b64(json.dumps(self.claims(**claims)).encode())
        tag = hmac.new(self.key.public_pem(), f"{header}.{body}".encode(), hashlib.sha256)
        return f"{header}.{body}.{_b64(tag.digest())}"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/jwks", self._jwks),
                Route("/authorize", self._authorize),
                Route("/token", self._token, methods=["POST"]),
            ]
        )

    async def _discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/jwks",
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        self.jwks_fetches += 1
        return JSONResponse({"keys": [key.jwk() for key in self.keys]})

    async def _authorize(self, request: Request) -> Response:
        query = request.query_params
        wanted = {"response_type": "code", "client_id": CLIENT_ID, "code_challenge_method": "S256"}
        if any(query.get(name) != value for name, value in wanted.items()):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if "openid" not in query.get("scope", "").split():
            return JSONResponse({"error": "invalid_scope"}, status_code=400)
        code = secrets.token_urlsafe(24)
        self.codes[code] = Grant(query["redirect_uri"], query["code_challenge"], query["nonce"])
        back = urlencode({"code": code, "state": query["state"]})
        return RedirectResponse(f"{query['redirect_uri']}?{back}", status_code=302)

    async def _token(self, request: Request) -> Response:
        # Parsed by hand: Starlette's form parsing needs python-multipart, which we do not ship.
        form = {
            name: values[0] for name, values in parse_qs((await request.body()).decode()).items()
        }
        grant = self.codes.pop(form.get("code", ""), None)  # one use
        verifier = form.get("code_verifier", "")
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("client_id") != CLIENT_ID
            or form.get("redirect_uri") != grant.redirect_uri
            or challenge != grant.challenge
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        now = int(time.time())
        id_token = self.token(
            aud=CLIENT_ID, nonce=grant.nonce, exp=now + self.id_token_seconds, iat=now
        )
        self.issued.append(id_token)
        return JSONResponse({"id_token": id_token, "token_type": "Bearer", "expires_in": 300})


@contextlib.asynccontextmanager
async def running_provider() -> AsyncIterator[Provider]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    provider = Provider(issuer=f"http://127.0.0.1:{sock.getsockname()[1]}")
    server = uvicorn.Server(
        uvicorn.Config(provider.app(), lifespan="off", log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        if serving.done():
            serving.result()
            raise AssertionError("the identity provider exited during start-up")
        return bool(server.started)

    try:
        await wait_for(started, timeout=10)
        yield provider
    finally:
        server.should_exit = True
        try:
            await serving
        finally:
            sock.close()
