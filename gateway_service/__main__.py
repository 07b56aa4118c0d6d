"""`python -m gateway_service`: the public entry point of Subgate."""

from __future__ import annotations

from gateway_service.app import create_app
from shared.server import run_service
from shared.settings import Settings


def _address(settings: Settings) -> tuple[str, int, int]:
    return settings.gateway_host, settings.gateway_port, settings.gateway_metrics_port


if __name__ == "__main__":
    run_service("gateway", create_app, _address)
