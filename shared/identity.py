"""User ids of the contract and the opaque hash providers see instead of them."""

from __future__ import annotations

import hashlib


def account_user(app_account_token: str) -> str:
    """The user of a purchase made with an appAccountToken."""
    return f"acct:{app_account_token.lower()}"


def transaction_user(original_transaction_id: str) -> str:
    """The user of a purchase without an appAccountToken: one purchase, one user."""
    return f"txn:{original_transaction_id}"


def key_user(api_key: str) -> str:
    """The user of a key pass-through caller, named by a hash of the key."""
    return "key:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def provider_user_hash(user_id: str) -> str:
    """A stable opaque id for a user, sent to providers as the end-user identifier."""
    return hashlib.sha256(f"subgate-user:{user_id}".encode()).hexdigest()[:32]
