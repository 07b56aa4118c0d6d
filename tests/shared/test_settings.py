"""Settings: legacy names, precedence, casts and the messages operators see."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from shared.settings import Secret, Settings, SettingsError, load_settings
from tests.support.processes import REPO

SECRET = "x" * 40


def test_settings_accept_every_legacy_name(tmp_path: Path) -> None:
    legacy = {
        "JWTPrivateKey": SECRET,
        "tokenExpiration": "600",
        "appBundleId": "com.example.app",
        "appAppleId": "123",
        "appTeamId": "TEAM",
        "environment": "sandbox",
        "IAPPrivateKey": "-----BEGIN KEY-----\\nabc\\n-----END KEY-----",
        "IAPIssuerId": "issuer",
        "IAPKeyId": "key",
        "OpenAI-APIKey": "sk-openai",
        "OpenAI-Organization": "org-1",
        "target": "https://proxy.example.com/v1",
        "Anthropic-APIKey": "sk-ant-1",
        "allowKeyPassthrough": "true",
        "enableRateLimiter": "false",
        "userMinuteRateLimit": "3",
        "userHourlyRateLimit": "4",
        "userPermanentBlock": "5",
        "anonMinuteRateLimit": "6",
        "anonHourlyRateLimit": "7",
        "anonPermanentBlock": "8",
        "logLevel": "debug",
    }

    settings = load_settings(legacy, env_file=None)

    assert settings.jwt_secret.get() == SECRET
    assert settings.jwt_ttl_seconds == 600
    assert settings.app_bundle_id == "com.example.app"
    assert settings.appstore_environment == "Sandbox"
    assert settings.iap_private_key.get().count("\n") == 2
    assert settings.openai_api_key.get() == "sk-openai"
    assert settings.openai_base_url == "https://proxy.example.com"
    assert settings.anthropic_api_key.get() == "sk-ant-1"
    assert settings.allow_key_passthrough is True
    assert settings.rate_limit_enabled is False
    assert (settings.user_minute_rate_limit, settings.anon_permanent_block) == (3, 8)
    assert settings.log_level == "debug"


def test_new_name_wins_over_legacy_and_environment_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f"JWT_SECRET={SECRET}\nUSER_MINUTE_RATE_LIMIT=1\nOpenAI-APIKey=sk-file\n"
    )
    env = {"USER_MINUTE_RATE_LIMIT": "9", "userMinuteRateLimit": "2"}

    settings = load_settings(env, env_file=dotenv)

    assert settings.user_minute_rate_limit == 9
    assert settings.openai_api_key.get() == "sk-file"


def test_defaults_follow_the_contract() -> None:
    settings = load_settings({"JWT_SECRET": SECRET}, env_file=None)

    assert settings.jwt_ttl_seconds == 3600
    assert settings.rate_limit_enabled is True
    assert settings.user_minute_rate_limit == 15
    assert settings.user_hourly_rate_limit == 50
    assert settings.max_body_bytes == 26214400
    assert ("GET", "/v1/models/*") in settings.allowed_paths
    assert ("GET", "/v1/chat/completions") not in settings.allowed_paths


def test_missing_and_invalid_values_are_each_named_on_one_line() -> None:
    env = {
        "USER_MINUTE_RATE_LIMIT": "many",
        "REDIS_URL": "http://x",
        "LOG_LEVEL": "info",
    }

    with pytest.raises(SettingsError) as raised:
        load_settings(env, env_file=None)

    problems = raised.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("JWT_SECRET is not set")
    assert any(p.startswith("USER_MINUTE_RATE_LIMIT") for p in problems)
    assert any(p.startswith("REDIS_URL") for p in problems)


def test_short_jwt_secret_is_refused_with_how_to_fix() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"JWT_SECRET": "short"}, env_file=None)

    assert "JWT_SECRET is 5 bytes; it must be at least 32" in raised.value.problems[0]
    assert "secrets.token_urlsafe" in raised.value.problems[0]


def test_secrets_are_masked_in_repr() -> None:
    settings = load_settings(
        {"JWT_SECRET": SECRET, "OPENAI_API_KEY": "sk-live-value"}, env_file=None
    )

    assert "sk-live-value" not in repr(settings)
    assert SECRET not in repr(settings)
    assert repr(Secret("abc")) == "Secret('**********')"


@pytest.mark.parametrize("module", ["auth_service", "gateway_service"])
def test_service_stops_at_once_naming_each_problem(module: str) -> None:
    env = {"PATH": "", "SUBGATE_ENV_FILE": "/nonexistent", "JWT_SECRET": "short"}

    result = subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=30,
        text=True,
    )

    assert result.returncode == 2
    assert "JWT_SECRET is 5 bytes" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_example_documents_every_setting() -> None:
    documented = (REPO / ".env.example").read_text()

    missing = [
        spec.metadata["env"]
        for spec in fields(Settings)
        if f"{spec.metadata['env']}=" not in documented
    ]

    assert missing == []
