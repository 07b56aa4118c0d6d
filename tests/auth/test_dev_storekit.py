"""The development StoreKit chain and its command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.signed_data_verifier import (
    SignedDataVerifier,
    VerificationException,
)
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from auth_service.dev_storekit import (
    APPLE_INTERMEDIATE_OID,
    APPLE_LEAF_OID,
    DevChain,
    main,
)

BUNDLE = "com.example.cli"
REPO = Path(__file__).resolve().parents[2]
TOKEN = "6F9619FF-8B86-D011-B42D-00CF4FC964FF"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "auth_service.dev_storekit", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)


def apple_verifier(root_der: bytes, environment: str = "Sandbox") -> SignedDataVerifier:
    return SignedDataVerifier(
        [root_der], False, Environment(environment), BUNDLE, 1234567890
    )


def test_dev_storekit_cli_init_and_sign_make_data_apple_accepts(tmp_path: Path) -> None:
    directory = str(tmp_path / "dev-storekit")
    init = run_cli("init", "--dir", directory)
    sign = run_cli(
        "sign", "--dir", directory, "--bundle-id", BUNDLE, "--product-id", "pro.y"
    )

    root_der = (Path(directory) / "root.cer").read_bytes()
    decoded = apple_verifier(root_der).verify_and_decode_signed_transaction(
        sign.stdout.strip()
    )
    assert "APPLE_ROOT_CERTS_DIR" in init.stdout
    assert decoded.productId == "pro.y"
    assert decoded.rawType == "Auto-Renewable Subscription"
    assert decoded.expiresDate is not None


def test_dev_storekit_cli_sign_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    args = ["sign", "--dir", str(tmp_path), "--bundle-id", BUNDLE]
    args += ["--type", "Non-Consumable", "--environment", "Production"]
    args += ["--app-account-token", TOKEN, "--original-transaction-id", "42"]

    assert main(args) == 0

    jws = capsys.readouterr().out.strip()
    root_der = (tmp_path / "root.cer").read_bytes()
    decoded = apple_verifier(
        root_der, "Production"
    ).verify_and_decode_signed_transaction(jws)
    assert decoded.rawType == "Non-Consumable"
    assert decoded.expiresDate is None
    assert decoded.appAccountToken == TOKEN.lower()
    assert decoded.originalTransactionId == "42"


def test_dev_storekit_cli_init_keeps_an_existing_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--dir", str(tmp_path)]) == 0
    first = (tmp_path / "root.cer").read_bytes()

    assert main(["init", "--dir", str(tmp_path)]) == 1
    assert (tmp_path / "root.cer").read_bytes() == first
    assert main(["init", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "root.cer").read_bytes() != first


def test_dev_storekit_cli_sign_without_chain_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sign", "--dir", str(tmp_path), "--bundle-id", BUNDLE]) == 1
    assert "init" in capsys.readouterr().err


def test_dev_storekit_load_round_trips(tmp_path: Path) -> None:
    created = DevChain.create(tmp_path)
    loaded = DevChain.load(tmp_path)

    jws = loaded.sign_transaction(bundle_id=BUNDLE)

    assert loaded.x5c == created.x5c
    assert apple_verifier(created.root_der).verify_and_decode_signed_transaction(jws)


def test_dev_storekit_header_and_signature_look_like_apples() -> None:
    chain = DevChain.create()

    jws = chain.sign_transaction(bundle_id=BUNDLE)

    header = jwt.get_unverified_header(jws)
    assert header == {"alg": "ES256", "x5c": chain.x5c}
    signature = jws.rsplit(".", 1)[1]
    assert len(jwt.utils.base64url_decode(signature)) == 64  # raw r||s


def test_dev_storekit_certificates_carry_apples_markers() -> None:
    chain = DevChain.create(ocsp_url="http://127.0.0.1:9/ocsp")
    root, inter, leaf = (
        chain.root.cert,
        chain.intermediate.cert,
        chain.leaf.cert,
    )

    def constraints(cert: x509.Certificate) -> x509.Extension[x509.BasicConstraints]:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints)

    assert constraints(root).critical and constraints(root).value.ca
    assert constraints(inter).critical and constraints(inter).value.ca
    assert not constraints(leaf).value.ca
    assert inter.extensions.get_extension_for_oid(APPLE_INTERMEDIATE_OID)
    assert leaf.extensions.get_extension_for_oid(APPLE_LEAF_OID)
    assert leaf.extensions.get_extension_for_class(
        x509.KeyUsage
    ).value.digital_signature
    for cert in (inter, leaf):
        access = cert.extensions.get_extension_for_oid(
            ExtensionOID.AUTHORITY_INFORMATION_ACCESS
        ).value
        assert access[0].access_method == AuthorityInformationAccessOID.OCSP
        assert access[0].access_location.value == "http://127.0.0.1:9/ocsp"


def test_dev_storekit_chain_is_not_apples() -> None:
    apple_root = REPO.parent / "shared" / "apple"
    root_file = apple_root / "AppleRootCA-G3.cer"
    if not root_file.is_file():
        pytest.skip(f"Apple reference data not found at {apple_root}")
    chain = DevChain.create()
    verifier = apple_verifier(root_file.read_bytes())

    with pytest.raises(VerificationException):
        verifier.verify_and_decode_signed_transaction(
            chain.sign_transaction(bundle_id=BUNDLE)
        )
