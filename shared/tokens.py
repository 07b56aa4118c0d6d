"""Session tokens: HS256 JWTs minted by auth and verified by every gateway replica."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from shared.errors import SessionExpired
from shared.settings import Secret, Settings

ISSUER = "subgate-auth"
AUDIENCE = "subgate-gateway"
ALGORITHM = "HS256"
# Verified tokens remembered per process, so a client's every call does not pay for
# base64, JSON and HMAC again; bounded, and each hit re-checks the expiry.
_CACHE_SIZE = 10_000
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "exp", "jti"]


@dataclass(frozen=True)
class Session:
    """The verified claims of a session token."""

    user_id: str
    original_transaction_id: str | None
    environment: str | None
    product_id: str | None
    expires_at: int


def key_id(secret: Secret) -> str:
    """A public, stable name for a secret, so rotation can pick the right key."""
    return hashlib.sha256(secret.get().encode("utf-8")).hexdigest()[:16]


class TokenSigner:
    """Mints session tokens with the current secret."""

    def __init__(self, settings: Settings) -> None:
        self._secret = settings.jwt_secret
        self._kid = key_id(settings.jwt_secret)
        self._ttl = settings.jwt_ttl_seconds

    def mint(
        self,
        user_id: str,
        *,
        original_transaction_id: str | None,
        environment: str,
        product_id: str | None,
        not_after: int | None = None,
    ) -> tuple[str, int]:
        """A new token and its expiry (unix seconds), never later than `not_after`."""
        now = int(time.time())
        expires_at = now + self._ttl
        if not_after is not None:
            expires_at = min(expires_at, not_after)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "iat": now,
            "exp": expires_at,
            "jti": uuid.uuid4().hex,
            "otid": original_transaction_id,
            "env": environment,
            "pid": product_id,
        }
        token = jwt.encode(
            claims, self._secret.get(), algorithm=ALGORITHM, headers={"kid": self._kid}
        )
        return token, expires_at


class TokenVerifier:
    """Verifies session tokens against the current and previous secrets."""

    def __init__(self, settings: Settings) -> None:
        secrets = (settings.jwt_secret, *settings.jwt_previous_secrets)
        self._keys = {key_id(secret): secret.get() for secret in secrets}
        self._verified: dict[str, Session] = {}

    def verify(self, token: str) -> Session:
        """The token's session, or SessionExpired for anything not valid now."""
        session = self._verified.get(token)
        if session is not None and session.expires_at > time.time():
            return session
        session = self._verify(token)
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = session
        return session

    def _verify(self, token: str) -> Session:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise SessionExpired() from exc
        key = self._keys.get(str(header.get("kid", "")))
        if key is None or header.get("alg") != ALGORITHM:
            raise SessionExpired()
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise SessionExpired() from exc
        return _session(claims)


def _session(claims: dict[str, Any]) -> Session:
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not user_id:
        raise SessionExpired()
    return Session(
        user_id=user_id,
        original_transaction_id=_optional_str(claims.get("otid")),
        environment=_optional_str(claims.get("env")),
        product_id=_optional_str(claims.get("pid")),
        expires_at=int(claims["exp"]),
    )


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
