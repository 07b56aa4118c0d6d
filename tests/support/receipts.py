"""App receipts built in the tests: PKCS#7 SignedData around the ASN.1 SET of receipt
attributes, with in-app purchases (attribute 17) carrying transaction ids (1703,
original 1705), as Apple's receipts are laid out. Nothing signs them: Apple's receipt
parser never checks a signature, which is exactly why they prove so little.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms, core

BUNDLE_ID = 2
APP_VERSION = 3
IN_APP = 17
PRODUCT_ID = 1702
TRANSACTION_ID = 1703
ORIGINAL_TRANSACTION_ID = 1705


class ReceiptAttribute(core.Sequence):
    _fields = [
        ("type", core.Integer),
        ("version", core.Integer),
        ("value", core.OctetString),
    ]


class ReceiptSet(core.SetOf):
    _child_spec = ReceiptAttribute


@dataclass(frozen=True)
class InApp:
    transaction_id: str
    original_transaction_id: str
    product_id: str = "subgate.pro.monthly"


def _text(kind: int, value: str) -> ReceiptAttribute:
    return ReceiptAttribute(
        {"type": kind, "version": 1, "value": core.UTF8String(value).dump()}
    )


def _in_app(purchase: InApp) -> ReceiptAttribute:
    fields = ReceiptSet(
        [
            _text(PRODUCT_ID, purchase.product_id),
            _text(TRANSACTION_ID, purchase.transaction_id),
            _text(ORIGINAL_TRANSACTION_ID, purchase.original_transaction_id),
        ]
    )
    return ReceiptAttribute({"type": IN_APP, "version": 1, "value": fields.dump()})


def receipt_der(bundle_id: str, purchases: Sequence[InApp]) -> bytes:
    """The DER of a PKCS#7 ContentInfo holding the receipt's attribute set."""
    attributes = ReceiptSet(
        [
            _text(BUNDLE_ID, bundle_id),
            _text(APP_VERSION, "1.0"),
            *(_in_app(p) for p in purchases),
        ]
    )
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {
                "content_type": "data",
                "content": attributes.dump(),
            },
            "signer_infos": [],
        }
    )
    info = cms.ContentInfo({"content_type": "signed_data", "content": signed})
    return bytes(info.dump())


def app_receipt(
    bundle_id: str, purchases: Sequence[InApp], *, wrap: int | None = None
) -> str:
    """Base64 of a receipt; `wrap` breaks it into lines as some clients send it."""
    text = base64.b64encode(receipt_der(bundle_id, purchases)).decode("ascii")
    if wrap is None:
        return text
    return "\r\n".join(textwrap.wrap(text, wrap))


def transaction_receipt(transaction_id: str) -> str:
    """An old per-transaction receipt (SKPaymentTransaction.transactionReceipt)."""
    purchase_info = base64.b64encode(
        f'{{\n\t"transaction-id" = "{transaction_id}";\n}}'.encode()
    ).decode("ascii")
    outer = f'{{\n\t"signature" = "AAAA";\n\t"purchase-info" = "{purchase_info}";\n}}'
    return base64.b64encode(outer.encode()).decode("ascii")
