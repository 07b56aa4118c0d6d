"""PurchaseVerifier against a real Apple-signed sandbox transaction and Apple's roots.

The reference data lives beside the repository in `../shared/apple` (never copied into
it); see its README. The leaf certificate has expired, so these run with online checks
off, where Apple's library judges the chain at the payload's `signedDate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from auth_service import appstore
from auth_service.appstore import PurchaseVerifier
from auth_service.dev_storekit import DevChain
from shared.errors import SubscriptionRequired
from shared.settings import load_settings

APPLE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "apple"
TRANSACTION = APPLE_DIR / "sandbox-transaction-consumable.jws"

Build = Callable[..., PurchaseVerifier]

pytestmark = pytest.mark.skipif(
    not TRANSACTION.is_file(),
    reason=f"Apple reference data not found at {APPLE_DIR} (a copy of shared/ "
    "beside the repository)",
)


@pytest.fixture
def jws() -> str:
    return TRANSACTION.read_text().strip()


@pytest.fixture
def build() -> Iterator[Build]:
    built: list[PurchaseVerifier] = []

    def make(**env: str) -> PurchaseVerifier:
        values = {
            "JWT_SECRET": "x" * 32,
            "APP_BUNDLE_ID": "com.goodheartapp",
            "APPSTORE_ENVIRONMENT": "Sandbox",
            "APPLE_ROOT_CERTS_DIR": str(APPLE_DIR),
            "APPSTORE_ONLINE_CHECKS": "0",
            "APPSTORE_PRODUCT_TYPES": "Consumable",
            **env,
        }
        verifier = PurchaseVerifier.from_settings(load_settings(values, env_file=None))
        built.append(verifier)
        return verifier

    yield make
    for verifier in built:
        verifier.close()


async def test_apple_real_sandbox_transaction_verifies(build: Build, jws: str) -> None:
    purchase = await build().verify_transaction(jws)

    assert purchase.environment == "Sandbox"
    assert purchase.product_type == "Consumable"
    assert purchase.product_id == "gh_super_good_ticket_1"
    assert purchase.transaction_id == "2000000847061981"
    assert purchase.user_id == f"txn:{purchase.original_transaction_id}"
    assert purchase.expires_at is None


async def test_apple_real_production_instance_falls_back_to_sandbox(
    build: Build, jws: str
) -> None:
    verifier = build(APPSTORE_ENVIRONMENT="Production", APP_APPLE_ID="1234567890")

    purchase = await verifier.verify_transaction(jws)

    assert purchase.environment == "Sandbox"


async def test_apple_real_other_bundle_id_is_refused(build: Build, jws: str) -> None:
    with pytest.raises(SubscriptionRequired) as caught:
        await build(APP_BUNDLE_ID="com.example.other").verify_transaction(jws)

    assert caught.value.message == appstore.OTHER_APP


async def test_apple_real_default_product_types_refuse_consumable(
    build: Build, jws: str
) -> None:
    verifier = build(
        APPSTORE_PRODUCT_TYPES="Auto-Renewable Subscription,Non-Consumable"
    )

    with pytest.raises(SubscriptionRequired) as caught:
        await verifier.verify_transaction(jws)

    assert caught.value.message == appstore.NOT_ALLOWED


async def test_apple_real_production_only_instance_refuses_it(
    build: Build, jws: str
) -> None:
    verifier = build(
        APPSTORE_ENVIRONMENT="Production",
        APP_APPLE_ID="1234567890",
        APPSTORE_ALLOW_SANDBOX="0",
    )

    with pytest.raises(SubscriptionRequired) as caught:
        await verifier.verify_transaction(jws)

    assert caught.value.message == appstore.OTHER_ENVIRONMENT


async def test_apple_real_expired_leaf_fails_with_online_checks(
    build: Build, jws: str
) -> None:
    # Judged at the current time, the leaf (expired October 2025) fails before any
    # OCSP request is made, so this needs no network.
    with pytest.raises(SubscriptionRequired):
        await build(APPSTORE_ONLINE_CHECKS="1").verify_transaction(jws)


async def test_apple_real_untrusted_without_apple_roots(
    build: Build, jws: str, tmp_path: Path
) -> None:
    DevChain.create().write_root(tmp_path)

    with pytest.raises(SubscriptionRequired):
        await build(APPLE_ROOT_CERTS_DIR=str(tmp_path)).verify_transaction(jws)
