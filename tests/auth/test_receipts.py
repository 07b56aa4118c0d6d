"""Transaction ids from receipts and bare ids (parsed by Apple's ReceiptUtility)."""

from __future__ import annotations

import pytest

from auth_service import receipts
from auth_service.receipts import looks_like_jws, transaction_id_from
from shared.errors import SubscriptionRequired
from tests.support.receipts import InApp, app_receipt, transaction_receipt

PURCHASE = InApp("2000000000000002", "2000000000000001")


def test_receipts_app_receipt_gives_its_transaction_id() -> None:
    receipt = app_receipt("com.example.subgate", [PURCHASE])

    assert transaction_id_from(receipt) == "2000000000000002"


def test_receipts_whitespace_and_line_breaks_are_stripped() -> None:
    receipt = app_receipt("com.example.subgate", [PURCHASE], wrap=64)
    assert "\r\n" in receipt

    assert transaction_id_from(f"  {receipt}\n ") == "2000000000000002"


def test_receipts_bare_transaction_id_is_taken_as_is() -> None:
    assert transaction_id_from(" 2000000847061981\n") == "2000000847061981"


def test_receipts_old_transaction_receipt_gives_its_id() -> None:
    assert transaction_id_from(transaction_receipt("1000000123")) == "1000000123"


@pytest.mark.parametrize(
    "body",
    [
        app_receipt("com.example.subgate", []),
        "bm90IGEgcmVjZWlwdA==",
        "not base64 at all!",
        "12345678901234567890123456789012345",
    ],
    ids=["no-in-app", "base64-garbage", "garbage", "overlong-id"],
)
def test_receipts_without_a_purchase_are_refused(body: str) -> None:
    with pytest.raises(SubscriptionRequired) as caught:
        transaction_id_from(body)

    assert caught.value.message == receipts.NO_PURCHASE


def test_receipts_jws_is_told_apart_from_receipts() -> None:
    assert looks_like_jws("eyJh.eyJi.c2ln")
    assert not looks_like_jws(app_receipt("com.example.subgate", [PURCHASE]))
    assert not looks_like_jws("2000000847061981")
