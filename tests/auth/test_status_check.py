"""The current-status check of StoreKit 2 logins, against the fake App Store Server
API: refunded or lapsed subscriptions cannot log in with an old JWS."""

from __future__ import annotations

import pytest

from auth_service import status
from tests.auth.conftest import LocalAuth, MakeAuth
from tests.support.fake_appstore import (
    INTERNAL,
    RATE_LIMITED,
    FakeAppStore,
    Subscription,
    apple_error,
)

ACTIVE, EXPIRED, GRACE, REVOKED = 1, 2, 4, 5


@pytest.fixture
async def checked(make_auth: MakeAuth, appstore: FakeAppStore) -> LocalAuth:
    return await make_auth(**appstore.env())


def _known(appstore: FakeAppStore, auth: LocalAuth, otid: str, state: int) -> str:
    """Register the subscription with Apple in `state`; returns the app's JWS."""
    jws = auth.sign(original_transaction_id=otid, environment="Sandbox")
    appstore.add_subscription("Sandbox", Subscription(state, otid, jws))
    return jws


@pytest.mark.parametrize("state", [ACTIVE, GRACE])
async def test_status_check_active_subscription_logs_in(
    checked: LocalAuth, appstore: FakeAppStore, state: int
) -> None:
    jws = _known(appstore, checked, "4000000001", state)

    response = await checked.login(jws)

    assert response.status_code == 200, response.text
    assert [r.path for r in appstore.api_requests()] == [
        "/sandbox/inApps/v1/subscriptions/4000000001"
    ]


@pytest.mark.parametrize("state", [EXPIRED, 3, REVOKED])
async def test_status_check_refunded_or_lapsed_old_jws_is_refused(
    checked: LocalAuth, appstore: FakeAppStore, state: int
) -> None:
    jws = _known(appstore, checked, "4000000002", state)

    response = await checked.login(jws)

    assert response.status_code == 401
    assert response.json()["error"]["message"] == status.NOT_CURRENT


async def test_status_check_unknown_to_apple_is_refused(checked: LocalAuth) -> None:
    jws = checked.sign(original_transaction_id="4000000003")

    response = await checked.login(jws)

    assert response.status_code == 401


async def test_status_check_answers_are_cached(
    checked: LocalAuth, appstore: FakeAppStore
) -> None:
    jws = _known(appstore, checked, "4000000004", ACTIVE)

    first = await checked.login(jws)
    second = await checked.login(jws)

    assert first.status_code == second.status_code == 200
    assert len(appstore.api_requests()) == 1


async def test_status_check_off_by_setting(
    make_auth: MakeAuth, appstore: FakeAppStore
) -> None:
    auth = await make_auth(APPSTORE_STATUS_CHECK="0", **appstore.env())
    jws = _known(appstore, auth, "4000000005", REVOKED)

    response = await auth.login(jws)

    assert response.status_code == 200
    assert appstore.api_requests() == []


async def test_status_check_skips_one_time_purchases(
    checked: LocalAuth, appstore: FakeAppStore
) -> None:
    response = await checked.login(checked.sign(product_type="Non-Consumable"))

    assert response.status_code == 200
    assert appstore.api_requests() == []


async def test_status_check_rate_limited_lets_the_jws_decide_and_backs_off(
    checked: LocalAuth, appstore: FakeAppStore
) -> None:
    appstore.queue(apple_error(429, RATE_LIMITED))
    first = checked.sign(original_transaction_id="4000000006")
    second = checked.sign(original_transaction_id="4000000007")

    answers = [await checked.login(first), await checked.login(second)]

    assert [a.status_code for a in answers] == [200, 200]
    assert len(appstore.api_requests()) == 1  # backing off: Apple not asked again


async def test_status_check_outage_without_cache_is_unavailable(
    checked: LocalAuth, appstore: FakeAppStore
) -> None:
    appstore.queue(apple_error(500, INTERNAL))

    response = await checked.login(checked.sign(original_transaction_id="4000000008"))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


async def test_status_check_needs_credentials(
    make_auth: MakeAuth, appstore: FakeAppStore
) -> None:
    auth = await make_auth(
        APPSTORE_API_URL_SANDBOX=appstore.url("Sandbox"),
        APPSTORE_API_URL_PRODUCTION=appstore.url("Production"),
    )
    jws = _known(appstore, auth, "4000000009", REVOKED)

    response = await auth.login(jws)

    assert response.status_code == 200
    assert auth.service.status_check is None
