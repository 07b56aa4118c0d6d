"""PurchaseVerifier against transactions signed by a throwaway development chain."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_der_x509_certificate, ocsp

from auth_service import appstore
from auth_service.appstore import Purchase, PurchaseVerifier, decode_body
from auth_service.dev_storekit import (
    DevChain,
    new_signing_key,
    replace_certificate,
    tamper_payload,
    transaction_payload,
)
from shared.errors import InvalidRequest, SubscriptionRequired, Unavailable
from shared.settings import load_settings

BUNDLE = "com.example.subgate"
APPLE_ID = "1234567890"
TOKEN = "6F9619FF-8B86-D011-B42D-00CF4FC964FF"

MakeVerifier = Callable[..., PurchaseVerifier]


@pytest.fixture(scope="module")
def chain() -> DevChain:
    return DevChain.create()


@pytest.fixture(scope="module")
def stranger() -> DevChain:
    """A chain nobody trusts."""
    return DevChain.create()


@pytest.fixture
def roots_dir(tmp_path: Path, chain: DevChain) -> Path:
    directory = tmp_path / "roots"
    chain.write_root(directory)
    return directory


@pytest.fixture
def make_verifier(roots_dir: Path) -> Iterator[MakeVerifier]:
    built: list[PurchaseVerifier] = []

    def make(clock: Callable[[], float] | None = None, **env: str) -> PurchaseVerifier:
        values = {
            "JWT_SECRET": "x" * 32,
            "APP_BUNDLE_ID": BUNDLE,
            "APP_APPLE_ID": APPLE_ID,
            "APPLE_ROOT_CERTS_DIR": str(roots_dir),
            "APPSTORE_ONLINE_CHECKS": "0",
            **env,
        }
        settings = load_settings(values, env_file=None)
        extra: dict[str, Any] = {"clock": clock} if clock else {}
        verifier = PurchaseVerifier.from_settings(settings, **extra)
        built.append(verifier)
        return verifier

    yield make
    for verifier in built:
        verifier.close()


async def refused(verifier: PurchaseVerifier, jws: str) -> SubscriptionRequired:
    with pytest.raises(SubscriptionRequired) as caught:
        await verifier.verify_transaction(jws)
    return caught.value


async def test_appstore_sandbox_instance_accepts_sandbox(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APPSTORE_ENVIRONMENT="Sandbox")
    jws = chain.sign_transaction(
        bundle_id=BUNDLE, product_id="pro.monthly", original_transaction_id="1000"
    )

    purchase = await verifier.verify_transaction(jws)

    assert purchase.environment == "Sandbox"
    assert purchase.product_id == "pro.monthly"
    assert purchase.product_type == "Auto-Renewable Subscription"
    assert purchase.original_transaction_id == "1000"
    assert purchase.expires_at is not None
    assert verifier.environments == ("Sandbox",)


async def test_appstore_production_instance_accepts_production(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier()
    jws = chain.sign_transaction(bundle_id=BUNDLE, environment="Production")

    purchase = await verifier.verify_transaction(jws)

    assert purchase.environment == "Production"
    assert verifier.environments == ("Production", "Sandbox")


async def test_appstore_production_instance_falls_back_to_sandbox(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APPSTORE_ENVIRONMENT="Production")
    jws = chain.sign_transaction(bundle_id=BUNDLE, environment="Sandbox")

    purchase = await verifier.verify_transaction(jws)

    assert purchase.environment == "Sandbox"


async def test_appstore_sandbox_instance_refuses_production(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APPSTORE_ENVIRONMENT="Sandbox")
    jws = chain.sign_transaction(bundle_id=BUNDLE, environment="Production")

    error = await refused(verifier, jws)

    assert error.message == appstore.OTHER_ENVIRONMENT


async def test_appstore_disallowed_sandbox_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APPSTORE_ALLOW_SANDBOX="0")
    jws = chain.sign_transaction(bundle_id=BUNDLE, environment="Sandbox")

    error = await refused(verifier, jws)

    assert error.message == appstore.OTHER_ENVIRONMENT
    assert verifier.environments == ("Production",)
    assert any("APPSTORE_ALLOW_SANDBOX=0" in line for line in verifier.describe())


async def test_appstore_without_apple_id_production_is_unavailable(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APP_APPLE_ID="")
    production = chain.sign_transaction(bundle_id=BUNDLE, environment="Production")
    sandbox = chain.sign_transaction(bundle_id=BUNDLE, environment="Sandbox")

    with pytest.raises(Unavailable) as caught:
        await verifier.verify_transaction(production)
    purchase = await verifier.verify_transaction(sandbox)

    assert "APP_APPLE_ID" in caught.value.message
    assert purchase.environment == "Sandbox"
    assert any("APP_APPLE_ID" in line for line in verifier.describe())


async def test_appstore_without_apple_id_or_sandbox_is_off(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APP_APPLE_ID="", APPSTORE_ALLOW_SANDBOX="0")

    with pytest.raises(Unavailable) as caught:
        await verifier.verify_transaction(chain.sign_transaction(bundle_id=BUNDLE))

    assert "APP_APPLE_ID" in caught.value.message
    assert not verifier.enabled


async def test_appstore_non_numeric_apple_id_turns_production_off(
    make_verifier: MakeVerifier,
) -> None:
    verifier = make_verifier(APP_APPLE_ID="com.example")

    assert verifier.environments == ("Sandbox",)
    assert any("not a number" in line for line in verifier.describe())


async def test_appstore_changed_payload_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier()
    jws = chain.sign_transaction(bundle_id=BUNDLE, product_id="basic")
    forged = tamper_payload(jws, productId="premium")

    error = await refused(verifier, forged)

    assert error.message == appstore.NOT_VERIFIED


async def test_appstore_signature_by_another_key_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier()
    payload = transaction_payload(bundle_id=BUNDLE)
    forged = chain.sign_payload(payload, key=new_signing_key())

    await refused(verifier, forged)


async def test_appstore_untrusted_root_is_refused(
    make_verifier: MakeVerifier, stranger: DevChain
) -> None:
    verifier = make_verifier()
    jws = stranger.sign_transaction(bundle_id=BUNDLE)

    error = await refused(verifier, jws)

    assert error.message == appstore.NOT_VERIFIED


async def test_appstore_trusted_root_in_header_does_not_vouch_for_stranger(
    make_verifier: MakeVerifier, chain: DevChain, stranger: DevChain
) -> None:
    verifier = make_verifier()
    jws = replace_certificate(
        stranger.sign_transaction(bundle_id=BUNDLE), 2, chain.root_der
    )

    await refused(verifier, jws)


async def test_appstore_foreign_intermediate_is_refused(
    make_verifier: MakeVerifier, chain: DevChain, stranger: DevChain
) -> None:
    verifier = make_verifier()
    jws = chain.sign_transaction(bundle_id=BUNDLE)
    swapped = replace_certificate(jws, 1, stranger.intermediate.der)

    await refused(verifier, swapped)


async def test_appstore_other_bundle_id_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier()
    jws = chain.sign_transaction(bundle_id="com.example.other")

    error = await refused(verifier, jws)

    assert error.message == appstore.OTHER_APP


async def test_appstore_expired_subscription_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(clock=lambda: 1_700_000_030.0)
    jws = chain.sign_transaction(bundle_id=BUNDLE, expiresDate=1_700_000_000_000)

    error = await refused(verifier, jws)

    assert error.message == appstore.EXPIRED


async def test_appstore_grace_seconds_extend_expiry(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(clock=lambda: 1_700_000_030.0, APPSTORE_GRACE_SECONDS="60")
    jws = chain.sign_transaction(bundle_id=BUNDLE, expiresDate=1_700_000_000_000)

    purchase = await verifier.verify_transaction(jws)

    assert purchase.expires_at == 1_700_000_060


async def test_appstore_subscription_without_expiry_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier()
    jws = chain.sign_transaction(bundle_id=BUNDLE, expires_in=None)

    await refused(verifier, jws)


@pytest.mark.parametrize(
    "fields",
    [
        {"expiresDate": "soon"},
        {"originalTransactionId": None},
        {"transactionId": None},
    ],
)
async def test_appstore_signed_but_malformed_transaction_is_refused(
    make_verifier: MakeVerifier, chain: DevChain, fields: dict[str, Any]
) -> None:
    jws = chain.sign_transaction(bundle_id=BUNDLE, **fields)

    error = await refused(make_verifier(), jws)

    assert error.message == appstore.NOT_VERIFIED


async def test_appstore_revoked_purchase_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier()
    jws = chain.sign_transaction(bundle_id=BUNDLE, revoked=True)

    error = await refused(verifier, jws)

    assert error.message == appstore.REVOKED


async def test_appstore_upgraded_subscription_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier()
    jws = chain.sign_transaction(bundle_id=BUNDLE, isUpgraded=True)

    error = await refused(verifier, jws)

    assert error.message == appstore.UPGRADED


async def test_appstore_type_outside_allowlist_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier()
    jws = chain.sign_transaction(bundle_id=BUNDLE, product_type="Consumable")

    error = await refused(verifier, jws)

    assert error.message == appstore.NOT_ALLOWED


async def test_appstore_allowed_type_without_expiry_never_expires(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APPSTORE_PRODUCT_TYPES="Non-Consumable, Consumable")
    jws = chain.sign_transaction(bundle_id=BUNDLE, product_type="Non-Consumable")

    purchase = await verifier.verify_transaction(jws)

    assert purchase.product_type == "Non-Consumable"
    assert purchase.expires_at is None


async def test_appstore_product_outside_allowlist_is_refused(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APPSTORE_PRODUCT_IDS="pro.monthly,pro.yearly")
    allowed = chain.sign_transaction(bundle_id=BUNDLE, product_id="pro.yearly")
    other = chain.sign_transaction(bundle_id=BUNDLE, product_id="lite.monthly")

    purchase = await verifier.verify_transaction(allowed)
    error = await refused(verifier, other)

    assert purchase.product_id == "pro.yearly"
    assert error.message == appstore.NOT_ALLOWED


@pytest.mark.parametrize(
    "raw", [b"", b"   \n", "caf\u00e9".encode("latin-1"), b"\xff\xfe\x00"]
)
def test_appstore_decode_body_refuses_empty_or_not_utf8(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_body(raw)


def test_appstore_decode_body_strips_whitespace() -> None:
    assert decode_body(b"\xef\xbb\xbf  a.b.c\r\n") == "a.b.c"


async def test_appstore_blank_transaction_is_invalid_request(
    make_verifier: MakeVerifier,
) -> None:
    with pytest.raises(InvalidRequest):
        await make_verifier().verify_transaction("  ")


@pytest.mark.parametrize(
    "body", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "MIIT" + "A" * 70_000]
)
async def test_appstore_garbage_is_refused_without_echo(
    make_verifier: MakeVerifier, body: str
) -> None:
    error = await refused(make_verifier(), body)

    assert body[:20] not in error.message


async def test_appstore_identity_is_the_lowercased_app_account_token(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    jws = chain.sign_transaction(
        bundle_id=BUNDLE, app_account_token=TOKEN, original_transaction_id="77"
    )

    purchase = await make_verifier().verify_transaction(jws)

    assert purchase.user_id == f"acct:{TOKEN.lower()}"
    assert purchase.app_account_token == TOKEN.lower()


async def test_appstore_identity_without_token_is_the_original_transaction(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    jws = chain.sign_transaction(
        bundle_id=BUNDLE, transaction_id="78", original_transaction_id="77"
    )

    purchase = await make_verifier().verify_transaction(jws)

    assert purchase == Purchase(
        user_id="txn:77",
        original_transaction_id="77",
        transaction_id="78",
        product_id=purchase.product_id,
        product_type="Auto-Renewable Subscription",
        environment="Sandbox",
        expires_at=purchase.expires_at,
        app_account_token=None,
    )


async def test_appstore_verifiers_are_built_once(
    make_verifier: MakeVerifier, chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[object] = []

    class CountingVerifier(appstore.SignedDataVerifier):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(appstore, "SignedDataVerifier", CountingVerifier)
    verifier = make_verifier()
    for _ in range(3):
        await verifier.verify_transaction(chain.sign_transaction(bundle_id=BUNDLE))

    assert len(built) == 2


async def test_appstore_without_bundle_id_is_unavailable(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APP_BUNDLE_ID="")

    with pytest.raises(Unavailable) as caught:
        await verifier.verify_transaction(chain.sign_transaction(bundle_id=BUNDLE))

    assert "APP_BUNDLE_ID" in caught.value.message
    assert "APP_BUNDLE_ID" in verifier.describe()[0]


@pytest.mark.parametrize("folder", ["missing", "empty"])
async def test_appstore_without_roots_is_unavailable(
    make_verifier: MakeVerifier, chain: DevChain, tmp_path: Path, folder: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a certificate")
    verifier = make_verifier(APPLE_ROOT_CERTS_DIR=str(tmp_path / folder))

    with pytest.raises(Unavailable) as caught:
        await verifier.verify_transaction(chain.sign_transaction(bundle_id=BUNDLE))

    assert "APPLE_ROOT_CERTS_DIR" in caught.value.message
    assert not verifier.enabled


async def test_appstore_roots_may_be_pem_and_bad_files_are_skipped(
    make_verifier: MakeVerifier, chain: DevChain, tmp_path: Path
) -> None:
    directory = tmp_path / "pem"
    directory.mkdir()
    pem = load_der_x509_certificate(chain.root_der).public_bytes(
        serialization.Encoding.PEM
    )
    (directory / "root.cer").write_bytes(pem)
    (directory / "broken.der").write_bytes(b"not a certificate")
    verifier = make_verifier(APPLE_ROOT_CERTS_DIR=str(directory))

    purchase = await verifier.verify_transaction(
        chain.sign_transaction(bundle_id=BUNDLE)
    )

    assert purchase.environment == "Sandbox"


async def test_appstore_xcode_environment_skips_signatures_loudly(
    make_verifier: MakeVerifier, stranger: DevChain
) -> None:
    verifier = make_verifier(APPSTORE_ENVIRONMENT="Xcode")
    xcode = stranger.sign_transaction(bundle_id=BUNDLE, environment="Xcode")
    sandbox = stranger.sign_transaction(bundle_id=BUNDLE, environment="Sandbox")

    purchase = await verifier.verify_transaction(xcode)
    await refused(verifier, sandbox)

    assert purchase.environment == "Xcode"
    assert "WITHOUT" in verifier.describe()[0]


# --- Online checks: a fake of Apple's OCSP responder on loopback -------------------


class _OcspResponder:
    """An HTTP OCSP responder for a DevChain, answering with a chosen status."""

    def __init__(self) -> None:
        self.chain: DevChain | None = None
        self.status = ocsp.OCSPCertStatus.GOOD
        self.http_status = 200
        self.requests = 0
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                responder.requests += 1
                answer = b""
                if responder.http_status == 200 and responder.chain is not None:
                    answer = responder.chain.ocsp_response(
                        body, status=responder.status
                    )
                self.send_response(responder.http_status)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ocsp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def responder() -> Iterator[_OcspResponder]:
    server = _OcspResponder()
    yield server
    server.stop()


@pytest.fixture
def online_chain(responder: _OcspResponder, roots_dir: Path) -> DevChain:
    chain = DevChain.create(ocsp_url=responder.url)
    responder.chain = chain
    chain.write_root(roots_dir)
    return chain


async def test_appstore_online_checks_accept_good_status(
    make_verifier: MakeVerifier, online_chain: DevChain, responder: _OcspResponder
) -> None:
    verifier = make_verifier(APPSTORE_ONLINE_CHECKS="1", APPSTORE_ENVIRONMENT="Sandbox")

    first = await verifier.verify_transaction(
        online_chain.sign_transaction(bundle_id=BUNDLE)
    )
    second = await verifier.verify_transaction(
        online_chain.sign_transaction(bundle_id=BUNDLE)
    )

    assert first.environment == second.environment == "Sandbox"
    # One request for the intermediate, one for the leaf; then the library's cache.
    assert responder.requests == 2


async def test_appstore_online_checks_refuse_revoked_certificate(
    make_verifier: MakeVerifier, online_chain: DevChain, responder: _OcspResponder
) -> None:
    responder.status = ocsp.OCSPCertStatus.REVOKED
    verifier = make_verifier(APPSTORE_ONLINE_CHECKS="1")

    await refused(verifier, online_chain.sign_transaction(bundle_id=BUNDLE))


async def test_appstore_ocsp_outage_is_unavailable(
    make_verifier: MakeVerifier, online_chain: DevChain, responder: _OcspResponder
) -> None:
    responder.http_status = 503
    verifier = make_verifier(APPSTORE_ONLINE_CHECKS="1")

    with pytest.raises(Unavailable) as caught:
        await verifier.verify_transaction(
            online_chain.sign_transaction(bundle_id=BUNDLE)
        )

    assert caught.value.message == appstore.OCSP_DOWN


async def test_appstore_ocsp_unreachable_is_unavailable(
    make_verifier: MakeVerifier, online_chain: DevChain, responder: _OcspResponder
) -> None:
    responder.stop()  # its port now refuses connections
    verifier = make_verifier(APPSTORE_ONLINE_CHECKS="1")

    with pytest.raises(Unavailable):
        await verifier.verify_transaction(
            online_chain.sign_transaction(bundle_id=BUNDLE)
        )


async def test_appstore_online_checks_refuse_chain_without_responder(
    make_verifier: MakeVerifier, chain: DevChain
) -> None:
    verifier = make_verifier(APPSTORE_ONLINE_CHECKS="1")

    await refused(verifier, chain.sign_transaction(bundle_id=BUNDLE))
