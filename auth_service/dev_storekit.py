"""A throwaway StoreKit signing chain for development and tests.

It mimics Apple's: an EC P-256 root, an intermediate carrying Apple's intermediate
marker, and a leaf carrying Apple's signing marker, so Apple's `SignedDataVerifier`
accepts what it signs once (and only once) an operator trusts its root by putting
`root.cer` in APPLE_ROOT_CERTS_DIR. Nothing trusts it by default.

    python -m auth_service.dev_storekit init --dir .data/dev-storekit
    python -m auth_service.dev_storekit sign --dir .data/dev-storekit \\
        --bundle-id com.example.app --product-id pro.monthly

With `ocsp_url`, the leaf and intermediate name an OCSP responder (as Apple's do), and
`ocsp_response()` builds the answers such a responder gives.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import secrets
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

# Apple's markers, which the library requires on the intermediate and the leaf.
APPLE_INTERMEDIATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.2.1")
APPLE_LEAF_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.11.1")

_NAMES = ("root", "intermediate", "leaf")
_VALIDITY = datetime.timedelta(days=3650)
_BACKDATE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class _Member:
    """One certificate of the chain with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class DevChain:
    """A root, an intermediate and a leaf that signs StoreKit-like JWS data."""

    root: _Member
    intermediate: _Member
    leaf: _Member

    @classmethod
    def create(
        cls, directory: Path | None = None, *, ocsp_url: str | None = None
    ) -> DevChain:
        """Make a new chain; with a directory, also write it there."""
        root_key, inter_key, leaf_key = (_new_key() for _ in _NAMES)
        root = _Member(_root_cert(root_key), root_key)
        inter = _Member(_intermediate_cert(inter_key, root, ocsp_url), inter_key)
        leaf = _Member(_leaf_cert(leaf_key, inter, ocsp_url), leaf_key)
        chain = cls(root, inter, leaf)
        if directory is not None:
            chain.save(directory)
        return chain

    @classmethod
    def load(cls, directory: Path) -> DevChain:
        """Read a chain written by `create` or `save`."""
        members = [_load_member(Path(directory), name) for name in _NAMES]
        return cls(*members)

    def save(self, directory: Path) -> None:
        """Write `<name>.cer` (DER) and `<name>.key` (PEM) for each certificate."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, member in zip(_NAMES, self._members(), strict=True):
            (directory / f"{name}.cer").write_bytes(member.der)
            key_path = directory / f"{name}.key"
            key_path.write_bytes(_key_pem(member.key))
            key_path.chmod(0o600)

    def write_root(self, directory: Path) -> Path:
        """Put the root (DER) into a trusted-roots directory; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fingerprint = self.root.cert.fingerprint(hashes.SHA256()).hex()[:12]
        path = directory / f"subgate-dev-root-{fingerprint}.cer"
        path.write_bytes(self.root_der)
        return path

    @property
    def root_der(self) -> bytes:
        return self.root.der

    @property
    def x5c(self) -> list[str]:
        """The JWS `x5c` header: leaf, intermediate, root, base64 DER."""
        return [_b64(m.der) for m in (self.leaf, self.intermediate, self.root)]

    def sign_payload(
        self,
        payload: dict[str, Any],
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        x5c: Sequence[str] | None = None,
    ) -> str:
        """Sign any payload as Apple does (ES256, x5c header, raw r||s signature).

        `key` and `x5c` override the leaf key and the certificate list, for tests of
        forged data.
        """
        headers = {"x5c": list(self.x5c if x5c is None else x5c), "typ": None}
        return jwt.encode(
            payload, key or self.leaf.key, algorithm="ES256", headers=headers
        )

    def sign_transaction(self, **fields: Any) -> str:
        """Sign a transaction; `fields` override `transaction_payload`'s defaults."""
        return self.sign_payload(transaction_payload(**fields))

    def ocsp_response(
        self, request_der: bytes, *, status: ocsp.OCSPCertStatus | None = None
    ) -> bytes:
        """The DER answer an OCSP responder of this chain gives to a request."""
        request = ocsp.load_der_ocsp_request(request_der)
        subject, issuer = self._find_serial(request.serial_number)
        now = datetime.datetime.now(datetime.UTC)
        good = ocsp.OCSPCertStatus.GOOD
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=subject.cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA256(),
            cert_status=status or good,
            this_update=now - datetime.timedelta(minutes=1),
            next_update=now + datetime.timedelta(hours=1),
            revocation_time=None if status in (None, good) else now,
            revocation_reason=None,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
        response = builder.sign(issuer.key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)

    def _find_serial(self, serial: int) -> tuple[_Member, _Member]:
        if serial == self.leaf.cert.serial_number:
            return self.leaf, self.intermediate
        if serial == self.intermediate.cert.serial_number:
            return self.intermediate, self.root
        raise ValueError("the OCSP request names a certificate outside this chain")

    def _members(self) -> tuple[_Member, _Member, _Member]:
        return self.root, self.intermediate, self.leaf


def transaction_payload(
    *,
    bundle_id: str = "com.example.subgate",
    product_id: str = "subgate.pro.monthly",
    product_type: str = "Auto-Renewable Subscription",
    environment: str = "Sandbox",
    expires_in: int | None = 3600,
    app_account_token: str | None = None,
    transaction_id: str | None = None,
    original_transaction_id: str | None = None,
    revoked: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A payload shaped like Apple's JWSTransactionDecodedPayload.

    Times are milliseconds, as Apple's are. `expires_in` (seconds from now) only
    applies to subscriptions; `extra` sets or overrides any raw field (a value of
    None removes it).
    """
    now_ms = int(time.time() * 1000)
    transaction_id = transaction_id or str(2000000000000000 + secrets.randbelow(10**12))
    payload: dict[str, Any] = {
        "transactionId": transaction_id,
        "originalTransactionId": original_transaction_id or transaction_id,
        "bundleId": bundle_id,
        "productId": product_id,
        "purchaseDate": now_ms - 60_000,
        "originalPurchaseDate": now_ms - 60_000,
        "quantity": 1,
        "type": product_type,
        "inAppOwnershipType": "PURCHASED",
        "signedDate": now_ms,
        "environment": environment,
        "transactionReason": "PURCHASE",
        "storefront": "USA",
        "storefrontId": "143441",
        "price": 4990,
        "currency": "USD",
    }
    if "Subscription" in product_type:
        payload["webOrderLineItemId"] = str(2000000000 + secrets.randbelow(10**8))
        payload["subscriptionGroupIdentifier"] = "21000000"
    if product_type == "Auto-Renewable Subscription" and expires_in is not None:
        payload["expiresDate"] = now_ms + expires_in * 1000
    if app_account_token is not None:
        payload["appAccountToken"] = app_account_token
    if revoked:
        payload["revocationDate"] = now_ms
        payload["revocationReason"] = 0
    payload.update(extra)
    return {name: value for name, value in payload.items() if value is not None}


def tamper_payload(jws: str, **changes: Any) -> str:
    """The same JWS with payload fields changed and the old signature kept."""
    header, payload, signature = jws.split(".")
    fields = json.loads(_b64url_decode(payload))
    fields.update(changes)
    new_payload = _b64url(json.dumps(fields, separators=(",", ":")).encode())
    return f"{header}.{new_payload}.{signature}"


def replace_certificate(jws: str, position: int, der: bytes) -> str:
    """The same JWS with x5c[position] replaced (0 leaf, 1 intermediate, 2 root)."""
    header, payload, signature = jws.split(".")
    fields = json.loads(_b64url_decode(header))
    fields["x5c"][position] = _b64(der)
    new_header = _b64url(json.dumps(fields, separators=(",", ":")).encode())
    return f"{new_header}.{payload}.{signature}"


def new_signing_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key, for signatures no certificate vouches for."""
    return _new_key()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Subgate development"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Subgate (NOT Apple)"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _signing_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _root_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    builder = (
        _builder(
            "Subgate Development Root CA", _name("Subgate Development Root CA"), key
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
    )
    return builder.sign(key, hashes.SHA256())


def _intermediate_cert(
    key: ec.EllipticCurvePrivateKey, root: _Member, ocsp_url: str | None
) -> x509.Certificate:
    builder = (
        _builder("Subgate Development Intermediate", root.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(_authority_key_id(root), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(APPLE_INTERMEDIATE_OID, b"\x05\x00"),
            critical=False,
        )
    )
    builder = _with_ocsp(builder, ocsp_url)
    return builder.sign(root.key, hashes.SHA256())


def _leaf_cert(
    key: ec.EllipticCurvePrivateKey, intermediate: _Member, ocsp_url: str | None
) -> x509.Certificate:
    builder = (
        _builder("Subgate Development StoreKit Signing", intermediate.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_signing_usage(), critical=True)
        .add_extension(_authority_key_id(intermediate), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(APPLE_LEAF_OID, b"\x05\x00"), critical=False
        )
    )
    builder = _with_ocsp(builder, ocsp_url)
    return builder.sign(intermediate.key, hashes.SHA256())


def _authority_key_id(issuer: _Member) -> x509.AuthorityKeyIdentifier:
    ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _with_ocsp(
    builder: x509.CertificateBuilder, ocsp_url: str | None
) -> x509.CertificateBuilder:
    if ocsp_url is None:
        return builder
    location = x509.UniformResourceIdentifier(ocsp_url)
    access = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, location)
    return builder.add_extension(
        x509.AuthorityInformationAccess([access]), critical=False
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_member(directory: Path, name: str) -> _Member:
    cert = x509.load_der_x509_certificate((directory / f"{name}.cer").read_bytes())
    key = serialization.load_pem_private_key(
        (directory / f"{name}.key").read_bytes(), password=None
    )
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / name}.key is not an EC private key")
    return _Member(cert, key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m auth_service.dev_storekit",
        description="A development StoreKit signing chain (never trusted by default).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create a chain in a directory")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--ocsp-url", help="OCSP responder named by the certificates")
    init.add_argument("--force", action="store_true", help="replace an existing chain")

    sign = commands.add_parser("sign", help="print a signed StoreKit 2 transaction")
    sign.add_argument("--dir", type=Path, required=True)
    sign.add_argument("--bundle-id", required=True)
    sign.add_argument("--product-id", default="subgate.pro.monthly")
    sign.add_argument("--type", default="Auto-Renewable Subscription")
    sign.add_argument("--environment", default="Sandbox")
    sign.add_argument("--expires-in", type=int, default=3600, metavar="SECONDS")
    sign.add_argument("--app-account-token", help="a UUID; default: none")
    sign.add_argument("--original-transaction-id")
    sign.add_argument("--revoked", action="store_true")
    return parser


def _init(args: argparse.Namespace) -> int:
    if (args.dir / "root.cer").exists() and not args.force:
        print(f"{args.dir} already holds a chain; use --force to replace it.")
        return 1
    chain = DevChain.create(args.dir, ocsp_url=args.ocsp_url)
    print(f"Wrote a development chain to {args.dir}.")
    print(
        f"To trust it (development only): copy {args.dir / 'root.cer'} into the folder "
        "APPLE_ROOT_CERTS_DIR names, and set APPSTORE_ONLINE_CHECKS=0 unless an OCSP "
        "responder answers for it."
    )
    fingerprint = chain.root.cert.fingerprint(hashes.SHA256()).hex()
    print(f"Root SHA-256: {fingerprint}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    if not (args.dir / "root.cer").exists():
        print(f"No chain in {args.dir}; run the init command first.", file=sys.stderr)
        return 1
    token = args.app_account_token
    if token is not None:
        token = str(uuid.UUID(token))
    chain = DevChain.load(args.dir)
    print(
        chain.sign_transaction(
            bundle_id=args.bundle_id,
            product_id=args.product_id,
            product_type=args.type,
            environment=args.environment,
            expires_in=args.expires_in,
            app_account_token=token,
            original_transaction_id=args.original_transaction_id,
            revoked=args.revoked,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m auth_service.dev_storekit`."""
    args = _parser().parse_args(argv)
    if args.command == "init":
        return _init(args)
    return _sign(args)


if __name__ == "__main__":
    sys.exit(main())
