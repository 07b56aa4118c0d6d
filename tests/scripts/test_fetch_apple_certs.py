"""scripts/fetch_apple_certs.sh, offline: it reads Apple's roots from a local mirror
(file:// URLs) of ../shared/apple and refuses any file whose fingerprint differs."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fetch_apple_certs.sh"
APPLE_DIR = REPO.parent / "shared" / "apple"
NAMES = ("AppleRootCA-G3.cer", "AppleRootCA-G2.cer", "AppleIncRootCertificate.cer")

pytestmark = pytest.mark.skipif(
    not (APPLE_DIR / NAMES[0]).is_file() or shutil.which("curl") is None,
    reason="needs curl and Apple's roots in ../shared/apple",
)


def _fetch(mirror: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "APPLE_CERTS_URL": mirror.as_uri(),
        "CERTS_DIR": str(dest),
    }
    return subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


def test_fetch_apple_certs_keeps_pinned_files(tmp_path: Path) -> None:
    result = _fetch(APPLE_DIR, tmp_path / "certs")

    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in (tmp_path / "certs").iterdir())
    assert kept == sorted(NAMES)
    for name in NAMES:
        data = (tmp_path / "certs" / name).read_bytes()
        assert data == (APPLE_DIR / name).read_bytes()


def test_fetch_apple_certs_refuses_a_changed_file(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in NAMES:
        shutil.copy(APPLE_DIR / name, mirror / name)
    changed = bytearray((mirror / "AppleRootCA-G2.cer").read_bytes())
    changed[-1] ^= 0x01
    (mirror / "AppleRootCA-G2.cer").write_bytes(bytes(changed))

    result = _fetch(mirror, tmp_path / "certs")

    assert result.returncode != 0
    assert "REFUSED AppleRootCA-G2.cer" in result.stderr
    assert hashlib.sha256(changed).hexdigest() in result.stderr
    left = sorted(p.name for p in (tmp_path / "certs").iterdir())
    assert "AppleRootCA-G2.cer" not in left
    assert not any(name.endswith(".part") for name in left)


def test_fetch_apple_certs_fails_when_a_file_is_missing(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(APPLE_DIR / NAMES[0], mirror / NAMES[0])

    result = _fetch(mirror, tmp_path / "certs")

    assert result.returncode != 0
    assert "could not download" in result.stderr
