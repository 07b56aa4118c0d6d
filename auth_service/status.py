"""The current-status check of StoreKit 2 logins (APPSTORE_STATUS_CHECK).

A signed transaction stays valid until its expiresDate, even after a refund or a
lapse. When App Store Server API credentials exist, a login with an auto-renewable
subscription is also checked against Apple's current status (cached in Redis for
APPSTORE_STATUS_CACHE_SECONDS), so an old JWS of a refunded or lapsed subscription
cannot log in. While Apple rate limits this server and nothing is cached, the
verified JWS alone decides: a 429 never fails every login. An outage with nothing
cached answers 503.
"""

from __future__ import annotations

import logging

from auth_service.apple_api import API_ENVIRONMENTS, AppleAPI, AppleBusy
from auth_service.appstore import AUTO_RENEWABLE, Purchase
from auth_service.receipts import GRANTING_STATUSES
from shared.errors import SubscriptionRequired
from shared.settings import Settings

logger = logging.getLogger(__name__)

NOT_CURRENT = "The subscription is no longer active."


class StatusCheck:
    """Confirms a verified subscription purchase with Apple's current status."""

    def __init__(self, api: AppleAPI) -> None:
        self._api = api

    @classmethod
    def from_settings(
        cls, settings: Settings, api: AppleAPI | None
    ) -> StatusCheck | None:
        """The check, or None when it is off or there are no credentials."""
        if api is None:
            if settings.appstore_status_check:
                logger.info(
                    "Current-status checks of logins are off: no App Store Server API "
                    "credentials (IAP_PRIVATE_KEY, IAP_ISSUER_ID, IAP_KEY_ID)."
                )
            return None
        if not settings.appstore_status_check:
            logger.info(
                "Current-status checks of logins are off (APPSTORE_STATUS_CHECK=0)."
            )
            return None
        logger.info(
            "Subscription logins are checked against Apple's current status (cached "
            "%d s).",
            settings.appstore_status_cache_seconds,
        )
        return cls(api)

    async def confirm(self, purchase: Purchase) -> None:
        """Refuse a subscription Apple no longer reports active or in grace."""
        if purchase.product_type != AUTO_RENEWABLE:
            return
        if purchase.environment not in API_ENVIRONMENTS:
            return
        otid = purchase.original_transaction_id
        try:
            lookup = await self._api.statuses(otid, (purchase.environment,))
        except AppleBusy:
            logger.warning(
                "Apple is rate limiting status lookups; the signed transaction of "
                "%s decides alone for now",
                purchase.user_id,
            )
            return
        status = lookup.status_of(otid)
        if status not in GRANTING_STATUSES:
            logger.info(
                "Login of %s refused: Apple reports subscription status %s",
                purchase.user_id,
                status,
            )
            raise SubscriptionRequired(NOT_CURRENT)
