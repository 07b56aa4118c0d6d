#!/bin/sh
# Download Apple's root certificates into certs/ (`make certs`) and keep only files
# whose SHA-256 fingerprint is the pinned one below. A mismatch is refused: the file
# is deleted, the script says which, and it exits non-zero.
#
#   APPLE_CERTS_URL  where to download from (default Apple's certificate authority
#                    page; tests point it at a local file:// or http:// mirror)
#   CERTS_DIR        where to put them (default certs/)
#
# POSIX sh; needs curl and sha256sum (Linux) or shasum (macOS).
set -eu

BASE_URL=${APPLE_CERTS_URL:-https://www.apple.com/certificateauthority}
DEST=${CERTS_DIR:-certs}

# name  SHA-256 of the DER file (see certs/README.md)
PINNED="AppleRootCA-G3.cer 63343abfb89a6a03ebb57e9b3f5fa7be7c4f5c756f3017b3a8c488c3653e9179
AppleRootCA-G2.cer c2b9b042dd57830e7d117dac55ac8ae19407d38e41d88f3215bc3a890444a050
AppleIncRootCertificate.cer b0b1730ecbc7ff4505142c49f1295e6eda6bcaed7e2c68c5be91b5a11001f024"

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d ' ' -f 1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d ' ' -f 1
    else
        echo "fetch_apple_certs: neither sha256sum nor shasum is installed" >&2
        exit 2
    fi
}

command -v curl >/dev/null 2>&1 || {
    echo "fetch_apple_certs: curl is not installed" >&2
    exit 2
}
mkdir -p "$DEST"
failed=0
echo "$PINNED" | while read -r name expected; do
    part="$DEST/.$name.part"
    if ! curl -fsSL --retry 2 -o "$part" "$BASE_URL/$name"; then
        rm -f "$part"
        echo "FAILED  $name: could not download $BASE_URL/$name" >&2
        exit 1
    fi
    actual=$(sha256 "$part")
    if [ "$actual" != "$expected" ]; then
        rm -f "$part"
        echo "REFUSED $name: SHA-256 $actual, expected $expected" >&2
        exit 1
    fi
    mv "$part" "$DEST/$name"
    echo "ok      $DEST/$name ($expected)"
done || failed=1

if [ "$failed" -ne 0 ]; then
    echo "Not every certificate was installed; nothing untrusted was kept." >&2
    exit 1
fi
echo "Apple's root certificates are in $DEST/."
