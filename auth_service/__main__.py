"""`python -m auth_service`: App Store validation and session tokens."""

from __future__ import annotations

from auth_service.app import create_app
from shared.server import run_service
from shared.settings import Settings


def _address(settings: Settings) -> tuple[str, int, int]:
    return settings.auth_host, settings.auth_port, settings.auth_metrics_port


if __name__ == "__main__":
    run_service("auth", create_app, _address)
