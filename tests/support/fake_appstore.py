"""A fake App Store Server API on loopback, speaking Apple's formats, and builders of
signed notifications and renewal info for the tests.

One server answers both environments: `url("Production")` and `url("Sandbox")` are
its base URL with a `/production` or `/sandbox` prefix, set as
APPSTORE_API_URL_PRODUCTION and APPSTORE_API_URL_SANDBOX. Every request must carry
the ES256 bearer token Apple's library makes from the test's IAP key; without it
the fake answers 401 with an empty body, as Apple does. Errors are Apple's JSON
(`{"errorCode": ..., "errorMessage": ...}`) with content type exactly
`application/json`, which the library requires to read them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth_service.dev_storekit import DevChain
from tests.support.fake_upstream import Answer, FakeUpstream, RecordedRequest

ISSUER_ID = "57246542-96fe-1a63-e053-0824d011072a"
KEY_ID = "TESTKEY123"
ENV_PREFIXES = {"Production": "/production", "Sandbox": "/sandbox"}

NOT_FOUND = {"errorCode": 4040010, "errorMessage": "Transaction id not found."}
RATE_LIMITED = {"errorCode": 4290000, "errorMessage": "Rate limit exceeded."}
INTERNAL = {"errorCode": 5000000, "errorMessage": "An unknown error occurred."}


def apple_error(status: int, body: dict[str, Any]) -> Answer:
    """An error answer as Apple sends it."""
    return Answer(status=status, body=body)


@dataclass
class IapKey:
    """An App Store Server API key (EC P-256), as App Store Connect issues them."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def env(self) -> dict[str, str]:
        """IAP_* settings, the key with literal `\\n`s as in a one-line .env entry."""
        return {
            "IAP_PRIVATE_KEY": self.pem.replace("\n", "\\n"),
            "IAP_ISSUER_ID": ISSUER_ID,
            "IAP_KEY_ID": KEY_ID,
        }


@dataclass
class Subscription:
    """One entry of a status answer (`lastTransactions`)."""

    status: int
    original_transaction_id: str
    signed_transaction: str
    signed_renewal: str | None = None
    group: str = "21000000"


class FakeAppStore(FakeUpstream):
    """Apple's /inApps/v1/subscriptions and /inApps/v1/transactions endpoints."""

    def __init__(self, key: IapKey, bundle_id: str, app_apple_id: int) -> None:
        super().__init__()
        self.key = key
        self.bundle_id = bundle_id
        self.app_apple_id = app_apple_id
        self.customers: dict[tuple[str, str], list[Subscription]] = {}
        self.transactions: dict[tuple[str, str], str] = {}

    def url(self, environment: str) -> str:
        return self.base_url + ENV_PREFIXES[environment]

    def env(self) -> dict[str, str]:
        return {
            **self.key.env(),
            "APPSTORE_API_URL_PRODUCTION": self.url("Production"),
            "APPSTORE_API_URL_SANDBOX": self.url("Sandbox"),
        }

    def add_subscription(
        self, environment: str, subscription: Subscription, *ids: str
    ) -> None:
        """Make the subscription known under its original id and `ids`."""
        for known in {subscription.original_transaction_id, *ids}:
            self.customers.setdefault((environment, known), []).append(subscription)

    def add_transaction(self, environment: str, transaction_id: str, jws: str) -> None:
        self.transactions[(environment, transaction_id)] = jws

    def reset(self) -> None:
        super().reset()
        self.customers.clear()
        self.transactions.clear()

    def api_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if "/inApps/" in r.path]

    def default_answer(self, request: RecordedRequest) -> Answer:
        environment, path = self._split(request.path)
        if environment is None:
            return apple_error(404, NOT_FOUND)
        if not self._authorized(request):
            return Answer(status=401, raw=b"")
        if path.startswith("/inApps/v1/subscriptions/"):
            return self._statuses(environment, path.rsplit("/", 1)[1])
        if path.startswith("/inApps/v1/transactions/"):
            return self._transaction(environment, path.rsplit("/", 1)[1])
        return apple_error(404, NOT_FOUND)

    def _split(self, path: str) -> tuple[str | None, str]:
        for environment, prefix in ENV_PREFIXES.items():
            if path.startswith(prefix + "/"):
                return environment, path[len(prefix) :]
        return None, path

    def _authorized(self, request: RecordedRequest) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer":
            return False
        try:
            claims = jwt.decode(
                token,
                self.key.key.public_key(),
                algorithms=["ES256"],
                audience="appstoreconnect-v1",
                issuer=ISSUER_ID,
            )
        except jwt.InvalidTokenError:
            return False
        header = jwt.get_unverified_header(token)
        return header.get("kid") == KEY_ID and claims.get("bid") == self.bundle_id

    def _statuses(self, environment: str, transaction_id: str) -> Answer:
        subscriptions = self.customers.get((environment, transaction_id))
        if subscriptions is None:
            return apple_error(404, NOT_FOUND)
        groups: dict[str, list[dict[str, Any]]] = {}
        for sub in subscriptions:
            item: dict[str, Any] = {
                "status": sub.status,
                "originalTransactionId": sub.original_transaction_id,
                "signedTransactionInfo": sub.signed_transaction,
            }
            if sub.signed_renewal is not None:
                item["signedRenewalInfo"] = sub.signed_renewal
            groups.setdefault(sub.group, []).append(item)
        body = {
            "environment": environment,
            "bundleId": self.bundle_id,
            "appAppleId": self.app_apple_id,
            "data": [
                {"subscriptionGroupIdentifier": group, "lastTransactions": items}
                for group, items in groups.items()
            ],
        }
        return Answer(body=body)

    def _transaction(self, environment: str, transaction_id: str) -> Answer:
        jws = self.transactions.get((environment, transaction_id))
        if jws is None:
            return apple_error(404, NOT_FOUND)
        return Answer(body={"signedTransactionInfo": jws})


# --- signed data the App Store sends: renewal info and notifications


def renewal_payload(
    *,
    original_transaction_id: str,
    environment: str = "Sandbox",
    product_id: str = "subgate.pro.monthly",
    grace_expires_in: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A payload shaped like Apple's JWSRenewalInfoDecodedPayload (times in ms)."""
    now_ms = int(time.time() * 1000)
    payload: dict[str, Any] = {
        "originalTransactionId": original_transaction_id,
        "autoRenewProductId": product_id,
        "productId": product_id,
        "autoRenewStatus": 1,
        "signedDate": now_ms,
        "environment": environment,
        "recentSubscriptionStartDate": now_ms - 86_400_000,
        "renewalDate": now_ms,
    }
    if grace_expires_in is not None:
        payload["isInBillingRetryPeriod"] = True
        payload["gracePeriodExpiresDate"] = now_ms + grace_expires_in * 1000
    payload.update(extra)
    return payload


def sign_notification(
    chain: DevChain,
    notification_type: str,
    *,
    bundle_id: str,
    app_apple_id: int | None,
    environment: str = "Sandbox",
    subtype: str | None = None,
    signed_transaction: str | None = None,
    signed_renewal: str | None = None,
    notification_uuid: str | None = None,
    signed_date_ms: int | None = None,
) -> str:
    """A signedPayload of an App Store Server Notification V2."""
    data: dict[str, Any] = {
        "bundleId": bundle_id,
        "bundleVersion": "1",
        "environment": environment,
    }
    if app_apple_id is not None:
        data["appAppleId"] = app_apple_id
    if signed_transaction is not None:
        data["signedTransactionInfo"] = signed_transaction
    if signed_renewal is not None:
        data["signedRenewalInfo"] = signed_renewal
    payload: dict[str, Any] = {
        "notificationType": notification_type,
        "notificationUUID": notification_uuid or str(uuid.uuid4()),
        "version": "2.0",
        "signedDate": signed_date_ms or int(time.time() * 1000),
        "data": data,
    }
    if subtype is not None:
        payload["subtype"] = subtype
    return chain.sign_payload(payload)
