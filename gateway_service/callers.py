"""Who is calling: a subscriber with a session token, or a key pass-through caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.asgi import Scope, header
from shared.errors import SessionExpired, SubscriptionRequired
from shared.identity import key_user
from shared.limits import Limits
from shared.settings import Secret, Settings
from shared.tokens import TokenVerifier

KeyProvider = Literal["openai", "anthropic"]
UNSIGNED_ENVIRONMENTS = frozenset({"Xcode", "LocalTesting"})


@dataclass(frozen=True)
class Caller:
    """The identity, limits and (for pass-through callers) own key of a request."""

    user_id: str
    original_transaction_id: str | None
    limits: Limits
    own_key: Secret | None = None
    own_key_provider: KeyProvider | None = None
    product_id: str | None = None


class CallerAuthenticator:
    """Turns a request's credentials into a Caller, or raises SessionExpired (407)."""

    def __init__(self, settings: Settings, verifier: TokenVerifier) -> None:
        self._verifier = verifier
        self._passthrough = settings.allow_key_passthrough
        self._unsigned_ok = settings.appstore_environment in UNSIGNED_ENVIRONMENTS
        self._user_limits = Limits.for_users(settings)
        self._anon_limits = Limits.for_anon(settings)

    def authenticate(self, scope: Scope, *, accept_api_key_header: bool) -> Caller:
        credential = _bearer(scope)
        if credential is None and accept_api_key_header:
            credential = header(scope, b"x-api-key")
        if not credential:
            raise SessionExpired()
        credential = credential.strip()

        if self._passthrough and credential.startswith("sk-"):
            return self._passthrough_caller(credential)
        session = self._verifier.verify(credential)
        if session.environment in UNSIGNED_ENVIRONMENTS and not self._unsigned_ok:
            # Minted by an instance that accepts unsigned StoreKit-testing data: it
            # proves no purchase to one that checks Apple's signatures.
            raise SubscriptionRequired("This session comes from a test environment.")
        return Caller(
            user_id=session.user_id,
            original_transaction_id=session.original_transaction_id,
            limits=self._user_limits,
            product_id=session.product_id,
        )

    def _passthrough_caller(self, key: str) -> Caller:
        provider: KeyProvider = "anthropic" if key.startswith("sk-ant-") else "openai"
        return Caller(
            user_id=key_user(key),
            original_transaction_id=None,
            limits=self._anon_limits,
            own_key=Secret(key),
            own_key_provider=provider,
        )


def _bearer(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token
