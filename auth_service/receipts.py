"""Legacy logins: a base64 app receipt or a bare transaction id (legacy flag on).

Apple's receipt parser does not check a receipt's signature, so a receipt proves only
that the caller knows a transaction id. The id is therefore only a question for the
App Store Server API: its subscription statuses (active or in billing grace period)
decide, and the signed transactions Apple returns are verified like any StoreKit 2
login. Ids without a subscription are looked up as single transactions, which grant
access only for types that do not renew (Non-Consumable, by default).
"""

from __future__ import annotations

import binascii
import logging
import re

from appstoreserverlibrary.models.Status import Status
from appstoreserverlibrary.receipt_utility import ReceiptUtility

from auth_service.apple_api import (
    API_ENVIRONMENTS,
    NOT_CONFIGURED,
    AppleAPI,
    StatusLookup,
    SubscriptionEntry,
)
from auth_service.appstore import AUTO_RENEWABLE, Purchase, PurchaseVerifier
from shared.errors import SubscriptionRequired, Unavailable
from shared.settings import Settings

logger = logging.getLogger(__name__)

TRANSACTION_ID = re.compile(r"[0-9]{1,32}")
GRANTING_STATUSES = (Status.ACTIVE, Status.BILLING_GRACE_PERIOD)

LEGACY_OFF = (
    "Receipts and transaction ids are not accepted here; send a StoreKit 2 "
    "transaction (JWS)."
)
NO_PURCHASE = "The receipt holds no in-app purchase."
NOT_FOUND = "The App Store knows no purchase with this transaction id."
NOT_ACTIVE = "The subscription is not active."
UNSIGNED_ENVIRONMENT = (
    "Receipts and transaction ids need the App Store Server API, which has no "
    "Xcode or LocalTesting environment."
)

_receipts = ReceiptUtility()


def looks_like_jws(text: str) -> bool:
    """Whether a login body is a compact JWS rather than a receipt or an id."""
    return text.count(".") == 2 and not any(ch.isspace() for ch in text)


def transaction_id_from(text: str) -> str:
    """The transaction id a receipt (or bare id) names; 401 when there is none.

    Whitespace and line breaks are stripped first (receipts are often wrapped).
    """
    compact = "".join(text.split())
    if TRANSACTION_ID.fullmatch(compact):
        return compact
    found = _from_app_receipt(compact) or _from_transaction_receipt(compact)
    if found is None or not TRANSACTION_ID.fullmatch(found):
        raise SubscriptionRequired(NO_PURCHASE)
    return found


def _from_app_receipt(receipt: str) -> str | None:
    try:
        found = _receipts.extract_transaction_id_from_app_receipt(receipt)
    except ValueError:
        return None
    return found if isinstance(found, str) else None


def _from_transaction_receipt(receipt: str) -> str | None:
    """The older per-transaction receipt (SKPaymentTransaction.transactionReceipt)."""
    try:
        found = _receipts.extract_transaction_id_from_transaction_receipt(receipt)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return found if isinstance(found, str) else None


class LegacyLogin:
    """Turns a receipt or a transaction id into a purchase via Apple's API."""

    def __init__(
        self, settings: Settings, verifier: PurchaseVerifier, api: AppleAPI | None
    ) -> None:
        self._enabled = settings.appstore_accept_legacy
        self._verifier = verifier
        self._api = api
        self._environments = tuple(
            name for name in verifier.environments if name in API_ENVIRONMENTS
        )

    def describe(self) -> list[str]:
        """Start-up lines for operators."""
        if not self._enabled:
            return ["Receipts and bare transaction ids are refused."]
        if self._api is None:
            return [f"APPSTORE_ACCEPT_LEGACY=1 but {NOT_CONFIGURED}"]
        return [
            "Receipts and bare transaction ids are accepted (APPSTORE_ACCEPT_LEGACY=1)"
            " and looked up in the App Store Server API. They prove only knowledge "
            "of a transaction id."
        ]

    async def verify(self, text: str) -> Purchase:
        """The purchase a receipt or bare transaction id stands for."""
        if not self._enabled:
            raise SubscriptionRequired(LEGACY_OFF)
        self._verifier.ensure_enabled()
        if self._api is None:
            raise Unavailable(NOT_CONFIGURED)
        if not self._environments:
            raise Unavailable(UNSIGNED_ENVIRONMENT)
        transaction_id = transaction_id_from(text)

        lookup = await self._api.statuses(transaction_id, self._environments)
        if lookup.subscriptions:
            return await self._from_subscriptions(lookup)
        return await self._from_transaction(transaction_id)

    async def _from_subscriptions(self, lookup: StatusLookup) -> Purchase:
        """The first active (or in grace) subscription that grants access here."""
        refusal: SubscriptionRequired = SubscriptionRequired(NOT_ACTIVE)
        for entry in lookup.subscriptions:
            if entry.status not in GRANTING_STATUSES:
                continue
            try:
                return await self._grant(entry)
            except SubscriptionRequired as exc:
                refusal = exc
        raise refusal

    async def _grant(self, entry: SubscriptionEntry) -> Purchase:
        access_until = None
        if entry.status == Status.BILLING_GRACE_PERIOD and entry.signed_renewal:
            renewal = await self._verifier.verify_renewal_info(entry.signed_renewal)
            access_until = renewal.gracePeriodExpiresDate
        return await self._verifier.verify_transaction(
            entry.signed_transaction, access_until_ms=access_until
        )

    async def _from_transaction(self, transaction_id: str) -> Purchase:
        """An id without subscriptions: a one-time purchase, or nothing."""
        assert self._api is not None
        found = await self._api.transaction(transaction_id, self._environments)
        if found.signed_transaction is None:
            raise SubscriptionRequired(NOT_FOUND)
        purchase = await self._verifier.verify_transaction(found.signed_transaction)
        if purchase.product_type == AUTO_RENEWABLE:
            # Only its subscription status may say a subscription is active.
            raise SubscriptionRequired(NOT_ACTIVE)
        return purchase
