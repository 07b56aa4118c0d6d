"""App Store Server Notifications V2: verification, revoke and restore per the
contract, idempotence, ordering, and end to end through the gateway."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import pytest
import redis

from auth_service.dev_storekit import DevChain
from auth_service.notifications import action_of
from tests.auth.conftest import LocalAuth, MakeAuth
from tests.conftest import APPLE_ID, BUNDLE_ID, Stack
from tests.support.fake_appstore import renewal_payload, sign_notification
from tests.support.redis_server import RedisServer

TOKEN = "7E3A1B2C-0000-4000-8000-ABCDEF012345"


def _notification(
    auth: LocalAuth | Stack, kind: str, transaction: str | None, **options: Any
) -> str:
    options.setdefault("bundle_id", BUNDLE_ID)
    options.setdefault("app_apple_id", int(APPLE_ID))
    return sign_notification(
        auth.chain, kind, signed_transaction=transaction, **options
    )


def _revoked(redis_server: RedisServer, user: str) -> set[bytes]:
    client = redis.Redis.from_url(redis_server.url)
    try:
        return set(client.smembers(f"subgate:revoked:{{{user}}}"))  # type: ignore[arg-type]
    finally:
        client.close()


@pytest.fixture
async def auth(make_auth: MakeAuth) -> LocalAuth:
    return await make_auth()


@pytest.mark.parametrize(
    ("kind", "subtype", "revoke"),
    [
        ("REFUND", None, True),
        ("REVOKE", None, True),
        ("EXPIRED", "VOLUNTARY", True),
        ("GRACE_PERIOD_EXPIRED", None, True),
        ("DID_FAIL_TO_RENEW", None, True),
        ("DID_FAIL_TO_RENEW", "GRACE_PERIOD", None),
        ("REFUND_REVERSED", None, False),
        ("DID_RENEW", None, False),
        ("SUBSCRIBED", "RESUBSCRIBE", False),
        ("TEST", None, None),
        ("PRICE_INCREASE", "PENDING", None),
        ("SOMETHING_NEW", None, None),
    ],
)
def test_notifications_contract_actions(
    kind: str, subtype: str | None, revoke: bool | None
) -> None:
    assert action_of(kind, subtype) is revoke


async def test_notifications_refund_revokes_under_the_account_user(
    auth: LocalAuth, redis_server: RedisServer
) -> None:
    jws = auth.sign(original_transaction_id="6000000001", app_account_token=TOKEN)
    assert (await auth.login(jws)).status_code == 200

    response = await auth.notify(_notification(auth, "REFUND", jws))

    assert response.status_code == 200
    assert response.json() == {"status": "applied"}
    assert _revoked(redis_server, f"acct:{TOKEN.lower()}") == {b"6000000001"}
    assert (await auth.login(jws)).status_code == 401


async def test_notifications_without_token_revoke_the_transaction_user(
    auth: LocalAuth, redis_server: RedisServer
) -> None:
    jws = auth.sign(original_transaction_id="6000000002")

    await auth.notify(_notification(auth, "REVOKE", jws))

    assert _revoked(redis_server, "txn:6000000002") == {b"6000000002"}


async def test_notifications_refund_reversed_restores(
    auth: LocalAuth, redis_server: RedisServer
) -> None:
    jws = auth.sign(original_transaction_id="6000000003")
    await auth.notify(_notification(auth, "REFUND", jws))

    response = await auth.notify(_notification(auth, "REFUND_REVERSED", jws))

    assert response.json() == {"status": "applied"}
    assert _revoked(redis_server, "txn:6000000003") == set()
    assert (await auth.login(jws)).status_code == 200


async def test_notifications_duplicate_uuid_changes_nothing(
    auth: LocalAuth, redis_server: RedisServer
) -> None:
    jws = auth.sign(original_transaction_id="6000000004")
    same = str(uuid.uuid4())
    now = int(time.time() * 1000)
    await auth.notify(_notification(auth, "REFUND", jws, notification_uuid=same))
    await auth.notify(_notification(auth, "REFUND_REVERSED", jws, signed_date_ms=now))

    again = await auth.notify(
        _notification(auth, "REFUND", jws, notification_uuid=same)
    )

    assert again.json() == {"status": "unchanged"}
    assert _revoked(redis_server, "txn:6000000004") == set()


async def test_notifications_older_than_the_last_applied_change_nothing(
    auth: LocalAuth, redis_server: RedisServer
) -> None:
    jws = auth.sign(original_transaction_id="6000000005")
    now = int(time.time() * 1000)
    await auth.notify(_notification(auth, "REFUND", jws, signed_date_ms=now))

    older = await auth.notify(
        _notification(auth, "REFUND_REVERSED", jws, signed_date_ms=now - 60_000)
    )

    assert older.json() == {"status": "unchanged"}
    assert _revoked(redis_server, "txn:6000000005") == {b"6000000005"}


@pytest.mark.parametrize("kind", ["TEST", "SOMETHING_NEW"])
async def test_notifications_test_and_unknown_types_answer_200(
    auth: LocalAuth, kind: str
) -> None:
    response = await auth.notify(_notification(auth, kind, None))

    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}


async def test_notifications_with_grace_period_subtype_keep_access(
    auth: LocalAuth, redis_server: RedisServer
) -> None:
    jws = auth.sign(original_transaction_id="6000000006")

    response = await auth.notify(
        _notification(auth, "DID_FAIL_TO_RENEW", jws, subtype="GRACE_PERIOD")
    )

    assert response.json() == {"status": "ignored"}
    assert _revoked(redis_server, "txn:6000000006") == set()


async def test_notifications_sandbox_without_app_apple_id_on_production_instance(
    auth: LocalAuth, redis_server: RedisServer
) -> None:
    jws = auth.sign(original_transaction_id="6000000007")

    response = await auth.notify(_notification(auth, "REFUND", jws, app_apple_id=None))

    assert response.json() == {"status": "applied"}


async def test_notifications_renewal_info_is_verified(auth: LocalAuth) -> None:
    jws = auth.sign(original_transaction_id="6000000008")
    renewal = renewal_payload(original_transaction_id="6000000008")
    good = auth.chain.sign_payload(renewal)
    forged = DevChain.create().sign_payload(renewal)

    accepted = await auth.notify(
        _notification(auth, "DID_RENEW", jws, signed_renewal=good)
    )
    refused = await auth.notify(
        _notification(auth, "DID_RENEW", jws, signed_renewal=forged)
    )

    assert accepted.status_code == 200
    assert refused.status_code == 401


async def test_notifications_forged_nested_transaction_is_refused(
    auth: LocalAuth, redis_server: RedisServer
) -> None:
    forged = DevChain.create().sign_transaction(
        bundle_id=BUNDLE_ID, original_transaction_id="6000000009"
    )

    response = await auth.notify(_notification(auth, "REFUND", forged))

    assert response.status_code == 401
    assert _revoked(redis_server, "txn:6000000009") == set()


async def test_notifications_forged_envelope_is_refused(auth: LocalAuth) -> None:
    jws = auth.sign(original_transaction_id="6000000010")
    stranger = DevChain.create()
    forged = sign_notification(
        stranger,
        "REFUND",
        bundle_id=BUNDLE_ID,
        app_apple_id=int(APPLE_ID),
        signed_transaction=jws,
    )

    response = await auth.notify(forged)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "subscription_required"


async def test_notifications_for_another_app_are_refused(auth: LocalAuth) -> None:
    response = await auth.notify(
        _notification(auth, "TEST", None, bundle_id="com.example.other")
    )

    assert response.status_code == 401


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'{"signedPayload": 1}'])
async def test_notifications_malformed_body_is_invalid_request(
    auth: LocalAuth, body: bytes
) -> None:
    response = await auth.client.post("/appstore/notifications", content=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


async def test_notifications_are_not_login_rate_limited(make_auth: MakeAuth) -> None:
    auth = await make_auth(LOGIN_RATE_LIMIT="1")
    jws = auth.sign()

    answers = [
        (await auth.notify(_notification(auth, "DID_RENEW", jws))).status_code
        for _ in range(3)
    ]
    logins = [(await auth.login(jws)).status_code for _ in range(2)]

    assert answers == [200, 200, 200]
    assert logins == [200, 429]


def test_notifications_end_to_end_refund_and_reversal(stack: Stack) -> None:
    jws = stack.sign(original_transaction_id="6000000099", app_account_token=TOKEN)
    token = httpx.post(stack.url + "/appstore", content=jws).json()["token"]
    client = stack.client(token)
    messages: Any = [{"role": "user", "content": "Hi"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    refund = _notification(stack, "REFUND", jws)
    answer = httpx.post(
        stack.url + "/appstore/notifications", json={"signedPayload": refund}
    )
    assert answer.status_code == 200
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert caught.value.status_code == 401
    assert caught.value.code == "subscription_required"
    assert httpx.post(stack.url + "/appstore", content=jws).status_code == 401

    reversal = _notification(stack, "REFUND_REVERSED", jws)
    answer = httpx.post(
        stack.url + "/appstore/notifications", json={"signedPayload": reversal}
    )
    assert answer.status_code == 200
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert reply.choices[0].message.content == "Hello from the fake!"
