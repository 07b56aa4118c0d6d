"""Legacy logins (receipts, bare transaction ids) through the fake App Store Server
API, on auth services with APPSTORE_ACCEPT_LEGACY and IAP credentials."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from auth_service import apple_api, receipts
from auth_service.dev_storekit import DevChain
from tests.auth.conftest import LocalAuth, MakeAuth, claims_of
from tests.conftest import BUNDLE_ID, Stack
from tests.support.fake_appstore import (
    INTERNAL,
    FakeAppStore,
    IapKey,
    Subscription,
    apple_error,
    renewal_payload,
)
from tests.support.processes import start_auth, start_gateway
from tests.support.receipts import InApp, app_receipt

ACTIVE, EXPIRED, GRACE, REVOKED = 1, 2, 4, 5


def _subscription(
    auth: LocalAuth, otid: str, status: int = ACTIVE, **fields: object
) -> Subscription:
    fields.setdefault("environment", "Production")
    jws = auth.sign(original_transaction_id=otid, transaction_id=otid, **fields)
    return Subscription(status, otid, jws)


@pytest.fixture
async def legacy(make_auth: MakeAuth, appstore: FakeAppStore) -> LocalAuth:
    return await make_auth(APPSTORE_ACCEPT_LEGACY="1", **appstore.env())


async def test_legacy_receipt_logs_in_through_subscription_status(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    appstore.add_subscription(
        "Production", _subscription(legacy, "3000000001"), "3000000002"
    )
    receipt = app_receipt(BUNDLE_ID, [InApp("3000000002", "3000000001")], wrap=76)

    response = await legacy.login(receipt)

    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["token"])
    assert claims["sub"] == "txn:3000000001"
    assert claims["otid"] == "3000000001"
    assert claims["env"] == "Production"
    paths = [r.path for r in appstore.api_requests()]
    assert paths == ["/production/inApps/v1/subscriptions/3000000002"]


async def test_legacy_bare_transaction_id_logs_in(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    appstore.add_subscription("Production", _subscription(legacy, "3000000011"))

    response = await legacy.login("3000000011")

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["token"])["otid"] == "3000000011"


async def test_legacy_token_never_outlives_the_subscription(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    appstore.add_subscription(
        "Production", _subscription(legacy, "3000000012", expires_in=120)
    )

    response = await legacy.login("3000000012")

    assert response.status_code == 200
    assert response.json()["expires_at"] <= time.time() + 121


async def test_legacy_sandbox_is_asked_when_production_does_not_know_the_id(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    sub = _subscription(legacy, "3000000021", environment="Sandbox")
    appstore.add_subscription("Sandbox", sub)

    response = await legacy.login("3000000021")

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["token"])["env"] == "Sandbox"
    assert [r.path for r in appstore.api_requests()] == [
        "/production/inApps/v1/subscriptions/3000000021",
        "/sandbox/inApps/v1/subscriptions/3000000021",
    ]


async def test_legacy_sandbox_refused_when_not_allowed(
    make_auth: MakeAuth, appstore: FakeAppStore
) -> None:
    auth = await make_auth(
        APPSTORE_ACCEPT_LEGACY="1", APPSTORE_ALLOW_SANDBOX="0", **appstore.env()
    )
    appstore.add_subscription(
        "Sandbox", _subscription(auth, "3000000022", environment="Sandbox")
    )

    response = await auth.login("3000000022")

    assert response.status_code == 401
    assert [r.path for r in appstore.api_requests()] == [
        "/production/inApps/v1/subscriptions/3000000022",
        "/production/inApps/v1/transactions/3000000022",
    ]


async def test_legacy_billing_grace_period_grants_until_its_end(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    sub = _subscription(legacy, "3000000031", GRACE, expires_in=-3600)
    renewal = renewal_payload(
        original_transaction_id="3000000031",
        environment="Production",
        grace_expires_in=600,
    )
    sub.signed_renewal = legacy.chain.sign_payload(renewal)
    appstore.add_subscription("Production", sub)

    response = await legacy.login("3000000031")

    assert response.status_code == 200, response.text
    assert time.time() < response.json()["expires_at"] <= time.time() + 601


@pytest.mark.parametrize("status", [EXPIRED, 3, REVOKED])
async def test_legacy_subscription_not_active_is_refused(
    legacy: LocalAuth, appstore: FakeAppStore, status: int
) -> None:
    appstore.add_subscription("Production", _subscription(legacy, "3000000041", status))

    response = await legacy.login("3000000041")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == receipts.NOT_ACTIVE


async def test_legacy_product_outside_allowlist_is_refused(
    make_auth: MakeAuth, appstore: FakeAppStore
) -> None:
    auth = await make_auth(
        APPSTORE_ACCEPT_LEGACY="1",
        APPSTORE_PRODUCT_IDS="other.product",
        **appstore.env(),
    )
    appstore.add_subscription("Production", _subscription(auth, "3000000042"))

    response = await auth.login("3000000042")

    assert response.status_code == 401


async def test_legacy_forged_status_data_is_refused(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    forged = DevChain.create().sign_transaction(
        bundle_id=BUNDLE_ID,
        environment="Production",
        original_transaction_id="3000000043",
    )
    appstore.add_subscription("Production", Subscription(ACTIVE, "3000000043", forged))

    response = await legacy.login("3000000043")

    assert response.status_code == 401


async def test_legacy_unknown_id_is_refused_after_both_environments(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    response = await legacy.login("3000000051")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == receipts.NOT_FOUND
    assert len(appstore.api_requests()) == 4  # statuses and transaction, both envs


async def test_legacy_non_consumable_found_as_transaction(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    jws = legacy.sign(
        product_type="Non-Consumable",
        environment="Production",
        transaction_id="3000000061",
    )
    appstore.add_transaction("Production", "3000000061", jws)

    response = await legacy.login("3000000061")

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["token"])["otid"] == "3000000061"


async def test_legacy_subscription_only_found_as_transaction_is_refused(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    jws = legacy.sign(environment="Production", transaction_id="3000000062")
    appstore.add_transaction("Production", "3000000062", jws)

    response = await legacy.login("3000000062")

    assert response.status_code == 401


async def test_legacy_garbage_receipt_is_refused(legacy: LocalAuth) -> None:
    response = await legacy.login("bm90IGEgcmVjZWlwdA==")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "subscription_required"


async def test_legacy_apple_error_is_unavailable(
    legacy: LocalAuth, appstore: FakeAppStore
) -> None:
    appstore.queue(apple_error(500, INTERNAL))

    response = await legacy.login("3000000071")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert response.json()["error"]["message"] == apple_api.APPLE_DOWN


async def test_legacy_apple_unreachable_is_unavailable(make_auth: MakeAuth) -> None:
    from tests.support.redis_server import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    auth = await make_auth(
        APPSTORE_ACCEPT_LEGACY="1",
        APPSTORE_API_URL_PRODUCTION=closed,
        APPSTORE_API_URL_SANDBOX=closed,
        **IapKey().env(),
    )

    response = await auth.login("3000000072")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


async def test_legacy_credentials_apple_refuses_are_unavailable(
    make_auth: MakeAuth, appstore: FakeAppStore
) -> None:
    env = {**appstore.env(), **IapKey().env()}  # a key Apple does not know
    auth = await make_auth(APPSTORE_ACCEPT_LEGACY="1", **env)

    response = await auth.login("3000000073")

    assert response.status_code == 503
    assert response.json()["error"]["message"] == apple_api.APPLE_REFUSED


async def test_legacy_without_credentials_says_receipts_are_not_configured(
    make_auth: MakeAuth,
) -> None:
    auth = await make_auth(APPSTORE_ACCEPT_LEGACY="1")

    response = await auth.login(app_receipt(BUNDLE_ID, [InApp("1", "1")]))

    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "IAP_PRIVATE_KEY" in message and "IAP_KEY_ID" in message


async def test_legacy_off_refuses_forged_receipt_with_real_transaction_id(
    make_auth: MakeAuth, appstore: FakeAppStore
) -> None:
    auth = await make_auth(APPSTORE_ACCEPT_LEGACY="0", **appstore.env())
    appstore.add_subscription("Production", _subscription(auth, "3000000081"))
    forged = app_receipt(BUNDLE_ID, [InApp("3000000081", "3000000081")])

    for body in (forged, "3000000081"):
        response = await auth.login(body)
        assert response.status_code == 401
        assert response.json()["error"]["message"] == receipts.LEGACY_OFF
    assert appstore.api_requests() == []


def test_legacy_off_by_default_at_the_gateway(stack: Stack) -> None:
    forged = app_receipt(BUNDLE_ID, [InApp("3000000082", "3000000082")])

    response = httpx.post(stack.url + "/appstore", content=forged)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "subscription_required"


def test_legacy_receipt_end_to_end_through_the_gateway(
    base_env: dict[str, str],
    appstore: FakeAppStore,
    dev_chain: DevChain,
    stack: Stack,
    tmp_path: Path,
) -> None:
    env = {**base_env, "APPSTORE_ACCEPT_LEGACY": "1", **appstore.env()}
    jws = dev_chain.sign_transaction(
        bundle_id=BUNDLE_ID, environment="Sandbox", original_transaction_id="3000000091"
    )
    appstore.add_subscription("Sandbox", Subscription(ACTIVE, "3000000091", jws))
    receipt = app_receipt(BUNDLE_ID, [InApp("3000000091", "3000000091")], wrap=76)
    auth = start_auth(tmp_path, env, name="legacy-auth")
    gateway = start_gateway(tmp_path, env, auth.url, name="legacy-gateway")
    try:
        response = httpx.post(gateway.url + "/appstore", content=receipt)
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        client = openai.OpenAI(
            api_key=token, base_url=gateway.url + "/v1", max_retries=0
        )
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
    finally:
        gateway.stop()
        auth.stop()

    assert reply.choices[0].message.content == "Hello from the fake!"
    assert claims_of(token)["sub"] == "txn:3000000091"
