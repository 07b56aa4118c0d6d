"""App Store Server Notifications V2 at `POST /appstore/notifications`.

The signedPayload and the signedTransactionInfo and signedRenewalInfo nested in it are
verified with Apple's library. A notification then revokes or restores its purchase
in Redis (see `shared.revocations`), under the purchase's user: `acct:<token>` when
it has an appAccountToken, else `txn:<originalTransactionId>`. A duplicate
(same notificationUUID) or an older notification (by signedDate) changes nothing;
TEST and unknown types are answered 200 and change nothing.
"""

from __future__ import annotations

import logging
from typing import Literal

import orjson

from auth_service.appstore import PurchaseVerifier, VerifiedNotification, user_of
from shared.errors import InvalidRequest
from shared.revocations import RevocationStore

logger = logging.getLogger(__name__)

REVOKING = frozenset({"REFUND", "REVOKE", "EXPIRED", "GRACE_PERIOD_EXPIRED"})
RESTORING = frozenset({"REFUND_REVERSED", "DID_RENEW", "SUBSCRIBED"})
# Notifications are small; Apple's are a few kilobytes.
MAX_NOTIFICATION_BODY = 256 * 1024

Outcome = Literal["applied", "unchanged", "ignored"]


def action_of(notification_type: str, subtype: str | None) -> bool | None:
    """True to revoke, False to restore, None to change nothing."""
    if notification_type in REVOKING:
        return True
    if notification_type == "DID_FAIL_TO_RENEW" and not subtype:
        return True  # with GRACE_PERIOD, access continues during the grace period
    if notification_type in RESTORING:
        return False
    return None


def signed_payload_of(raw: bytes) -> str:
    """The `signedPayload` of a notification body; 400 when there is none."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            'The body must be JSON: {"signedPayload": "..."}.'
        ) from None
    payload = body.get("signedPayload") if isinstance(body, dict) else None
    if not isinstance(payload, str) or not payload.strip():
        raise InvalidRequest("The body has no signedPayload.", param="signedPayload")
    return payload


class NotificationReceiver:
    """Verifies notifications and applies them to the revocation store."""

    def __init__(
        self, verifier: PurchaseVerifier, revocations: RevocationStore
    ) -> None:
        self._verifier = verifier
        self._revocations = revocations

    async def receive(self, raw: bytes) -> Outcome:
        """Handle one notification body; raises the contract's errors."""
        notification = await self._verifier.verify_notification(signed_payload_of(raw))
        return await self._apply(notification)

    async def _apply(self, notification: VerifiedNotification) -> Outcome:
        payload = notification.payload
        kind = payload.rawNotificationType or ""
        subtype = payload.rawSubtype
        uuid = payload.notificationUUID
        revoke = action_of(kind, subtype)
        if revoke is None:
            logger.info(
                "App Store notification %s (%s) %s: no change", kind, subtype, uuid
            )
            return "ignored"

        transaction = notification.transaction
        user = user_of(transaction) if transaction is not None else None
        otid = transaction.originalTransactionId if transaction is not None else None
        if user is None or not otid or not uuid or payload.signedDate is None:
            logger.warning(
                "App Store notification %s %s names no purchase; nothing changed",
                kind,
                uuid,
            )
            return "ignored"

        applied = await self._revocations.apply(
            user,
            otid,
            revoke=revoke,
            notification_uuid=uuid,
            signed_date_ms=payload.signedDate,
        )
        verb = "revoked" if revoke else "restored"
        if applied:
            logger.info(
                "App Store notification %s %s: %s %s of %s",
                kind,
                uuid,
                verb,
                otid,
                user,
            )
            return "applied"
        logger.info(
            "App Store notification %s %s: duplicate or older; no change", kind, uuid
        )
        return "unchanged"
