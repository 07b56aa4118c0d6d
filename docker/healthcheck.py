"""Docker HEALTHCHECK of a Subgate container: `python docker/healthcheck.py gateway`.

Exits 0 when the service answers `GET /healthz` on its port (GATEWAY_PORT or AUTH_PORT,
default 8080 or 8081) on loopback, 1 otherwise. Standard library only.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORTS = {"gateway": "8080", "auth": "8081"}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in DEFAULT_PORTS:
        print("usage: healthcheck.py gateway|auth", file=sys.stderr)
        return 2
    service = argv[1]
    port = os.environ.get(f"{service.upper()}_PORT") or DEFAULT_PORTS[service]
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{service} is not healthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
