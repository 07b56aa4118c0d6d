"""Verification of StoreKit 2 purchases (JWS transactions) for `POST /appstore`.

Apple's `SignedDataVerifier` checks the signature, the certificate chain up to a
trusted root, Apple's certificate markers, OCSP (when online checks are on), the bundle
id and the environment. This module builds those verifiers once, runs them off the
event loop, and adds what grants access here: product type and id allowlists, expiry
plus grace, revocation. The result is a `Purchase` naming the user (see Identity in the
product contract).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.models.JWSRenewalInfoDecodedPayload import (
    JWSRenewalInfoDecodedPayload,
)
from appstoreserverlibrary.models.JWSTransactionDecodedPayload import (
    JWSTransactionDecodedPayload,
)
from appstoreserverlibrary.models.ResponseBodyV2DecodedPayload import (
    ResponseBodyV2DecodedPayload,
)
from appstoreserverlibrary.signed_data_verifier import (
    SignedDataVerifier,
    VerificationException,
    VerificationStatus,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.errors import InvalidRequest, SubscriptionRequired, Unavailable
from shared.identity import account_user, transaction_user
from shared.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

ROOT_SUFFIXES = (".cer", ".der")
AUTO_RENEWABLE = "Auto-Renewable Subscription"
# A StoreKit transaction is about 5 kB; anything far larger is not one.
MAX_JWS_CHARS = 64 * 1024
VERIFY_THREADS = 4

# Short, stable messages for clients; they never echo what was sent.
NOT_VERIFIED = "The purchase could not be verified."
OTHER_APP = "The purchase belongs to another app."
OTHER_ENVIRONMENT = (
    "The purchase comes from an App Store environment not accepted here."
)
NOT_ALLOWED = "This product does not grant access."
EXPIRED = "The subscription has expired."
REVOKED = "The purchase was refunded or revoked."
UPGRADED = "The subscription was upgraded; send the current transaction."
OCSP_DOWN = "Apple's certificate status service could not be reached; try again."
UNSIGNED_ENVIRONMENTS = ("Xcode", "LocalTesting")


@dataclass(frozen=True)
class Purchase:
    """A verified purchase that grants access."""

    user_id: str
    original_transaction_id: str
    transaction_id: str
    product_id: str
    product_type: str
    environment: str
    expires_at: int | None
    app_account_token: str | None


@dataclass(frozen=True)
class VerifiedNotification:
    """An App Store Server Notification V2 with its nested signed data verified."""

    payload: ResponseBodyV2DecodedPayload
    transaction: JWSTransactionDecodedPayload | None
    renewal: JWSRenewalInfoDecodedPayload | None


def user_of(transaction: JWSTransactionDecodedPayload) -> str | None:
    """The user a transaction belongs to (see Identity), or None without an id."""
    token = (transaction.appAccountToken or "").strip()
    if token:
        return account_user(token)
    if transaction.originalTransactionId:
        return transaction_user(transaction.originalTransactionId)
    return None


@dataclass(frozen=True)
class _Policy:
    """What a verified transaction must also satisfy to grant access."""

    product_types: frozenset[str]
    product_ids: frozenset[str]
    grace_seconds: int


def decode_body(raw: bytes) -> str:
    """The request body as text, stripped; 400 when empty or not UTF-8."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("The request body must be UTF-8 text.") from None
    text = text.strip()
    if not text:
        raise InvalidRequest("The request body is empty; send a StoreKit transaction.")
    return text


def load_root_certificates(directory: Path) -> list[bytes]:
    """DER bytes of every readable .cer/.der certificate (DER or PEM) in a folder."""
    if not directory.is_dir():
        return []
    roots = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in ROOT_SUFFIXES or not path.is_file():
            continue
        der = _read_certificate(path)
        if der is not None:
            roots.append(der)
    return roots


def _read_certificate(path: Path) -> bytes | None:
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError:
        logger.warning("Skipping %s: it is not a DER or PEM certificate.", path)
        return None
    return cert.public_bytes(serialization.Encoding.DER)


class PurchaseVerifier:
    """Verifies StoreKit 2 transactions with verifiers built once at start-up."""

    def __init__(
        self,
        verifiers: Sequence[tuple[str, SignedDataVerifier]],
        policy: _Policy,
        *,
        messages: Sequence[str] = (),
        off_reason: str | None = None,
        production_off_reason: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifiers = tuple(verifiers)
        self._policy = policy
        self._messages = list(messages)
        self._off_reason = off_reason
        self._production_off_reason = production_off_reason
        self._clock = clock
        self._executor = ThreadPoolExecutor(
            max_workers=VERIFY_THREADS, thread_name_prefix="appstore-verify"
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> PurchaseVerifier:
        """Build the verifiers the settings call for, and log what is on and why."""
        plan = _plan(settings)
        policy = _Policy(
            product_types=frozenset(settings.appstore_product_types),
            product_ids=frozenset(settings.appstore_product_ids),
            grace_seconds=settings.appstore_grace_seconds,
        )
        verifier = cls(
            plan.verifiers,
            policy,
            messages=plan.messages,
            off_reason=plan.off_reason,
            production_off_reason=plan.production_off_reason,
            clock=clock,
        )
        verifier._log_start_up(plan.warnings)
        return verifier

    @property
    def enabled(self) -> bool:
        """Whether any purchase can be verified at all."""
        return self._off_reason is None

    @property
    def environments(self) -> tuple[str, ...]:
        """The App Store environments accepted, in the order they are tried."""
        return tuple(name for name, _ in self._verifiers)

    def describe(self) -> list[str]:
        """Start-up lines for operators: what is verified, and what is off and why."""
        return list(self._messages)

    async def verify_transaction(
        self, jws: str, *, access_until_ms: int | None = None
    ) -> Purchase:
        """Verify a StoreKit 2 JWS transaction and return the purchase it proves.

        `access_until_ms` (from verified renewal info: the end of a billing grace
        period) extends access past the transaction's own expiresDate.
        Raises InvalidRequest (empty), Unavailable (logins off, OCSP unreachable,
        Production purchases off) or SubscriptionRequired (anything else).
        """
        text = self._checked_text(jws)
        loop = asyncio.get_running_loop()
        transaction = await loop.run_in_executor(self._executor, self._decode, text)
        return self._grant(transaction, access_until_ms)

    async def verify_renewal_info(self, jws: str) -> JWSRenewalInfoDecodedPayload:
        """Verify a signedRenewalInfo (from the App Store Server API)."""
        text = self._checked_text(jws)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decode_renewal, text)

    async def verify_notification(self, signed_payload: str) -> VerifiedNotification:
        """Verify a notification's signedPayload and the signed data nested in it.

        Raises SubscriptionRequired when anything fails verification, Unavailable
        when OCSP is unreachable or verification is off.
        """
        text = self._checked_text(signed_payload)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._decode_notification, text
        )

    def ensure_enabled(self) -> None:
        """Raise Unavailable, naming the reason, when no purchase can be verified."""
        if self._off_reason is not None:
            raise Unavailable(self._off_reason)

    def _checked_text(self, jws: str) -> str:
        self.ensure_enabled()
        text = jws.strip()
        if not text:
            raise InvalidRequest(
                "The request body is empty; send a StoreKit transaction."
            )
        if len(text) > MAX_JWS_CHARS:
            raise SubscriptionRequired(NOT_VERIFIED)
        return text

    def close(self) -> None:
        """Stop the verification threads (at shutdown)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _decode(self, jws: str) -> JWSTransactionDecodedPayload:
        """Apple's checks, Production first then Sandbox (runs in a worker thread)."""
        _, transaction = self._first_environment(
            lambda verifier: verifier.verify_and_decode_signed_transaction(jws)
        )
        return transaction

    def _decode_renewal(self, jws: str) -> JWSRenewalInfoDecodedPayload:
        _, renewal = self._first_environment(
            lambda verifier: verifier.verify_and_decode_renewal_info(jws)
        )
        return renewal

    def _decode_notification(self, signed_payload: str) -> VerifiedNotification:
        """The notification, then its nested data with the same environment's
        verifier (runs in a worker thread)."""
        verifier, payload = self._first_environment(
            lambda verifier: verifier.verify_and_decode_notification(signed_payload),
            next_on_app_id=True,
        )
        data = payload.data
        transaction = renewal = None
        if data is not None and data.signedTransactionInfo:
            signed = data.signedTransactionInfo
            transaction = self._nested(
                lambda: verifier.verify_and_decode_signed_transaction(signed)
            )
        if data is not None and data.signedRenewalInfo:
            signed_renewal = data.signedRenewalInfo
            renewal = self._nested(
                lambda: verifier.verify_and_decode_renewal_info(signed_renewal)
            )
        return VerifiedNotification(payload, transaction, renewal)

    def _nested(self, check: Callable[[], T]) -> T:
        """Nested data must be of its envelope's environment."""
        try:
            return self._judge(check)
        except _WrongEnvironment as exc:
            raise SubscriptionRequired(OTHER_ENVIRONMENT) from exc
        except _OtherApp as exc:
            raise SubscriptionRequired(OTHER_APP) from exc

    def _first_environment(
        self,
        check: Callable[[SignedDataVerifier], T],
        *,
        next_on_app_id: bool = False,
    ) -> tuple[SignedDataVerifier, T]:
        """Run Apple's checks with each accepted environment's verifier in turn,
        moving on when the data names another environment.

        With `next_on_app_id`, also after a wrong app id: for notifications Apple's
        library compares `appAppleId` (which Sandbox notifications may lack) before
        the environment; the Sandbox verifier still checks the bundle id.
        """
        last = len(self._verifiers) - 1
        for index, (_, verifier) in enumerate(self._verifiers):
            try:
                return verifier, self._judge(lambda: check(verifier))  # noqa: B023
            except _WrongEnvironment as exc:
                if index < last:
                    continue
                raise self._refusal(VerificationStatus.INVALID_ENVIRONMENT) from exc
            except _OtherApp as exc:
                if next_on_app_id and index < last:
                    continue
                raise self._refusal(VerificationStatus.INVALID_APP_IDENTIFIER) from exc
        raise Unavailable(self._off_reason)  # pragma: no cover - no verifiers

    def _judge(self, check: Callable[[], T]) -> T:
        """One of Apple's checks, its failures turned into the contract's errors
        (a wrong environment into `_WrongEnvironment`, for the caller to judge)."""
        try:
            return check()
        except VerificationException as exc:
            if exc.status == VerificationStatus.INVALID_ENVIRONMENT:
                raise _WrongEnvironment() from exc
            if exc.status == VerificationStatus.INVALID_APP_IDENTIFIER:
                raise _OtherApp() from exc
            raise self._refusal(exc.status) from exc
        except (ValueError, TypeError, ExceptionGroup) as exc:
            # Signed data the library's model cannot hold (cattrs errors).
            logger.info("App Store signed data has unexpected fields: %s", exc)
            raise SubscriptionRequired(NOT_VERIFIED) from exc

    def _refusal(
        self, status: VerificationStatus
    ) -> Unavailable | SubscriptionRequired:
        logger.info("App Store transaction refused by Apple's library: %s", status.name)
        if status == VerificationStatus.RETRYABLE_VERIFICATION_FAILURE:
            return Unavailable(OCSP_DOWN)
        if status == VerificationStatus.INVALID_APP_IDENTIFIER:
            return SubscriptionRequired(OTHER_APP)
        if status != VerificationStatus.INVALID_ENVIRONMENT:
            return SubscriptionRequired(NOT_VERIFIED)
        if self._production_off_reason is not None:
            # Validly signed for this app, but Production and we cannot check those.
            return Unavailable(self._production_off_reason)
        return SubscriptionRequired(OTHER_ENVIRONMENT)

    def _grant(
        self,
        transaction: JWSTransactionDecodedPayload,
        access_until_ms: int | None = None,
    ) -> Purchase:
        """The access rules beyond Apple's checks; returns the purchase or refuses."""
        product_type = transaction.rawType or ""
        product_id = transaction.productId or ""
        original_id = transaction.originalTransactionId
        if not original_id or not transaction.transactionId:
            raise SubscriptionRequired(NOT_VERIFIED)

        policy = self._policy
        if product_type not in policy.product_types:
            raise SubscriptionRequired(NOT_ALLOWED)
        if policy.product_ids and product_id not in policy.product_ids:
            raise SubscriptionRequired(NOT_ALLOWED)
        if transaction.revocationDate is not None:
            raise SubscriptionRequired(REVOKED)
        if transaction.isUpgraded:
            raise SubscriptionRequired(UPGRADED)
        expires_at = self._expiry(transaction, product_type, access_until_ms)

        token = (transaction.appAccountToken or "").strip().lower() or None
        return Purchase(
            user_id=user_of(transaction) or transaction_user(original_id),
            original_transaction_id=original_id,
            transaction_id=transaction.transactionId,
            product_id=product_id,
            product_type=product_type,
            environment=transaction.rawEnvironment or "",
            expires_at=expires_at,
            app_account_token=token,
        )

    def _expiry(
        self,
        transaction: JWSTransactionDecodedPayload,
        product_type: str,
        access_until_ms: int | None,
    ) -> int | None:
        """Unix seconds when access ends (grace included), or None if it never does."""
        if transaction.expiresDate is None:
            if product_type == AUTO_RENEWABLE:
                raise SubscriptionRequired(NOT_VERIFIED)
            return None
        expires_ms = max(transaction.expiresDate, access_until_ms or 0)
        expires_at = expires_ms // 1000 + self._policy.grace_seconds
        if expires_at <= self._clock():
            raise SubscriptionRequired(EXPIRED)
        return expires_at

    def _log_start_up(self, warnings: Sequence[str]) -> None:
        for line in self._messages:
            if line in warnings:
                logger.warning("%s", line)
            else:
                logger.info("%s", line)


class _WrongEnvironment(Exception):
    """Apple's library said the data names an environment this verifier is not."""


class _OtherApp(Exception):
    """Apple's library said the data names another app."""


@dataclass
class _Plan:
    """What `from_settings` decided: verifiers, and the reasons for what is off."""

    verifiers: list[tuple[str, SignedDataVerifier]]
    messages: list[str]
    warnings: list[str]
    off_reason: str | None = None
    production_off_reason: str | None = None

    def note(self, line: str, *, warning: bool = False) -> None:
        self.messages.append(line)
        if warning:
            self.warnings.append(line)

    def turn_off(self, reason: str, detail: str) -> None:
        self.off_reason = reason
        self.note(f"{reason} {detail}", warning=True)


def _plan(settings: Settings) -> _Plan:
    plan = _Plan(verifiers=[], messages=[], warnings=[])
    if not settings.app_bundle_id:
        plan.turn_off(
            "App Store logins are off: APP_BUNDLE_ID is not set.",
            "Set it to your app's bundle id (for example com.example.app).",
        )
        return plan

    environment = settings.appstore_environment
    if environment in ("Xcode", "LocalTesting"):
        _plan_unsigned(plan, settings, Environment(environment))
    else:
        _plan_signed(plan, settings)
    return plan


def _plan_unsigned(plan: _Plan, settings: Settings, environment: Environment) -> None:
    verifier = SignedDataVerifier([], False, environment, settings.app_bundle_id)
    plan.verifiers.append((environment.value, verifier))
    plan.note(
        f"APPSTORE_ENVIRONMENT={environment.value}: StoreKit testing data is accepted "
        "WITHOUT any signature check. Anyone can forge a purchase; never run this in "
        "production.",
        warning=True,
    )


def _plan_signed(plan: _Plan, settings: Settings) -> None:
    directory = Path(settings.apple_root_certs_dir)
    roots = load_root_certificates(directory)
    if not roots:
        plan.turn_off(
            "App Store logins are off: APPLE_ROOT_CERTS_DIR holds no certificate.",
            f"Put Apple's root certificates (.cer/.der, for example AppleRootCA-G3.cer "
            f"from https://www.apple.com/certificateauthority/) into "
            f"{settings.apple_root_certs_dir}.",
        )
        return

    names = _environment_names(plan, settings)
    apple_id = _apple_id(settings.app_apple_id)
    online = settings.appstore_online_checks
    for name in names:
        verifier = SignedDataVerifier(
            roots, online, Environment(name), settings.app_bundle_id, apple_id
        )
        plan.verifiers.append((name, verifier))
    if not plan.verifiers:
        plan.off_reason = plan.production_off_reason
        plan.note("No App Store purchase can be verified.", warning=True)
        return
    checks = "OCSP checks on" if online else "online checks off"
    plan.note(
        f"App Store logins for {settings.app_bundle_id}: {', then '.join(names)} "
        f"({len(roots)} trusted roots from {settings.apple_root_certs_dir}; {checks})."
    )


def _environment_names(plan: _Plan, settings: Settings) -> list[str]:
    """The environments to verify, and notes on the ones left out."""
    if settings.appstore_environment == "Sandbox":
        return ["Sandbox"]

    names = []
    apple_id = settings.app_apple_id
    if _apple_id(apple_id) is not None:
        names.append("Production")
    else:
        problem = "is not set" if not apple_id else "is not a number"
        plan.production_off_reason = (
            "Production App Store purchases cannot be verified: "
            f"APP_APPLE_ID {problem}."
        )
        plan.note(
            f"{plan.production_off_reason} Set it to your app's numeric Apple ID "
            "(App Store Connect, App Information); Apple's library requires it.",
            warning=True,
        )
    if settings.appstore_allow_sandbox:
        names.append("Sandbox")
    else:
        plan.note("Sandbox purchases are refused (APPSTORE_ALLOW_SANDBOX=0).")
    return names


def _apple_id(raw: str) -> int | None:
    return int(raw) if raw.isdigit() else None
