"""Revocations by notification: idempotent, ordered by signedDate, one slot per user."""

from __future__ import annotations

import pytest

from shared.redis import AsyncRedis
from shared.revocations import RevocationStore

USER = "acct:0b8e1c9a-35d4-4f2e-8a61-7c2d9e0f1a2b"


@pytest.fixture
def store(redis_client: AsyncRedis) -> RevocationStore:
    return RevocationStore(redis_client)


async def test_revocation_store_revoke_and_restore(store: RevocationStore) -> None:
    await store.revoke(USER, "2000")
    revoked = await store.is_revoked(USER, "2000")
    await store.restore(USER, "2000")

    assert revoked
    assert not await store.is_revoked(USER, "2000")
    assert not await store.is_revoked(USER, "3000")


async def test_revocation_store_apply_revokes_and_restores(
    store: RevocationStore,
) -> None:
    revoked = await store.apply(
        USER, "2000", revoke=True, notification_uuid="n1", signed_date_ms=1000
    )
    was_revoked = await store.is_revoked(USER, "2000")
    restored = await store.apply(
        USER, "2000", revoke=False, notification_uuid="n2", signed_date_ms=2000
    )

    assert (revoked, was_revoked, restored) == (True, True, True)
    assert not await store.is_revoked(USER, "2000")


async def test_revocation_store_ignores_duplicate_notifications(
    store: RevocationStore,
) -> None:
    await store.apply(
        USER, "2000", revoke=True, notification_uuid="n1", signed_date_ms=1000
    )
    await store.restore(USER, "2000")

    again = await store.apply(
        USER, "2000", revoke=True, notification_uuid="n1", signed_date_ms=1000
    )

    assert not again
    assert not await store.is_revoked(USER, "2000")


async def test_revocation_store_ignores_older_notifications(
    store: RevocationStore,
) -> None:
    await store.apply(
        USER, "2000", revoke=True, notification_uuid="n2", signed_date_ms=2000
    )

    older = await store.apply(
        USER, "2000", revoke=False, notification_uuid="n1", signed_date_ms=1000
    )
    other = await store.apply(
        USER, "3000", revoke=True, notification_uuid="n3", signed_date_ms=1000
    )

    assert (older, other) == (False, True)
    assert await store.revoked(USER) == {"2000", "3000"}


async def test_revocation_store_marks_seen_notifications_with_a_ttl(
    store: RevocationStore, redis_client: AsyncRedis
) -> None:
    await store.apply(
        USER, "2000", revoke=True, notification_uuid="n1", signed_date_ms=1000
    )

    ttl = await redis_client.ttl(f"subgate:notification:{{{USER}}}:n1")

    assert 0 < ttl <= 30 * 24 * 3600
