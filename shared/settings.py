"""Settings for both services, read once at start-up from the environment and `.env`.

Every variable may also be given under the Swift proxy's legacy name; the new name wins
over the legacy one, and the environment wins over the `.env` file.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

DEFAULT_ALLOWED_PATHS = (
    "POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, "
    "POST /v1/moderations, GET /v1/models, GET /v1/models/*, POST /v1/audio/*, "
    "POST /v1/images/*, POST /v1/responses, POST /v1/messages, "
    "POST /v1/messages/count_tokens, GET /v1/usage"
)
DEFAULT_TRUSTED_PROXIES = (
    "127.0.0.0/8, ::1/128, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7"
)
APPSTORE_ENVIRONMENTS = ("Production", "Sandbox", "Xcode", "LocalTesting")


class SettingsError(Exception):
    """One or more variables are missing or invalid; each problem is one line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A string whose repr is masked, so it never reaches a log by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("use 1/0/true/false")


def _int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError("must be a whole number") from None
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("must be a number") from None
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _str(raw: str) -> str:
    return raw.strip()


def _secret(raw: str) -> Secret:
    return Secret(raw.strip())


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value


def _openai_url(raw: str) -> str:
    value = _url(raw)
    return value[: -len("/v1")] if value.endswith("/v1") else value


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


def _jwt_secret(raw: str) -> Secret:
    size = len(raw.encode("utf-8"))
    if size < 32:
        raise ValueError(
            f"is {size} bytes; it must be at least 32. Generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    return Secret(raw)


def _secrets(raw: str) -> tuple[Secret, ...]:
    return tuple(Secret(item) for item in _list(raw))


def _private_key(raw: str) -> Secret:
    return Secret(raw.strip().replace("\\n", "\n"))


def _environment(raw: str) -> str:
    for name in APPSTORE_ENVIRONMENTS:
        if raw.strip().lower() == name.lower():
            return name
    raise ValueError(f"must be one of {', '.join(APPSTORE_ENVIRONMENTS)}")


def _networks(
    raw: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _list(raw))
    except ValueError as exc:
        raise ValueError(f"has an invalid address or CIDR ({exc})") from None


def _allowed_paths(raw: str) -> tuple[tuple[str, str], ...]:
    rules = []
    for item in _list(raw):
        method, _, path = item.partition(" ")
        if not method or not path.strip().startswith("/"):
            raise ValueError(f"entry {item!r} must look like 'POST /v1/path'")
        rules.append((method.upper(), path.strip()))
    return tuple(rules)


def _product_budgets(raw: str) -> tuple[tuple[str, int | None, int | None], ...]:
    """`<product id>=daily:<n>/monthly:<n>, ...`; a missing period keeps the global."""
    budgets = []
    for item in _list(raw):
        product, _, spec = item.rpartition("=")
        amounts: dict[str, int] = {}
        for part in spec.split("/"):
            period, _, amount = part.strip().partition(":")
            if period not in ("daily", "monthly") or not amount.strip().isdigit():
                raise ValueError(
                    f"entry {item!r} must look like 'pro=daily:200000/monthly:5000000'"
                )
            amounts[period] = int(amount)
        if not product.strip():
            raise ValueError(f"entry {item!r} needs a product id before '='")
        budgets.append((product.strip(), amounts.get("daily"), amounts.get("monthly")))
    return tuple(budgets)


def _max_tokens_policy(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("clamp", "refuse"):
        raise ValueError("must be clamp or refuse")
    return value


def _setting(
    name: str,
    default: str | None,
    cast: Callable[[str], Any],
    legacy: str | None = None,
) -> Any:
    """Declare a dataclass field bound to an environment variable."""
    meta = {"env": name, "legacy": legacy, "cast": cast, "raw_default": default}
    if default is None:
        return field(metadata=meta)
    return field(default=cast(default), metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Everything both services read from their environment, cast and checked."""

    jwt_secret: Secret = _setting("JWT_SECRET", None, _jwt_secret, "JWTPrivateKey")
    jwt_previous_secrets: tuple[Secret, ...] = _setting(
        "JWT_PREVIOUS_SECRETS", "", _secrets
    )
    jwt_ttl_seconds: int = _setting("JWT_TTL_SECONDS", "3600", _int, "tokenExpiration")

    redis_url: str = _setting("REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url)
    redis_cluster: bool = _setting("REDIS_CLUSTER", "0", _bool)
    redis_max_connections: int = _setting("REDIS_MAX_CONNECTIONS", "256", _int)

    gateway_host: str = _setting("GATEWAY_HOST", "127.0.0.1", _str)
    gateway_port: int = _setting("GATEWAY_PORT", "8080", _int)
    gateway_metrics_port: int = _setting("GATEWAY_METRICS_PORT", "9090", _int)
    auth_host: str = _setting("AUTH_HOST", "127.0.0.1", _str)
    auth_port: int = _setting("AUTH_PORT", "8081", _int)
    auth_metrics_port: int = _setting("AUTH_METRICS_PORT", "9091", _int)
    auth_url: str = _setting("AUTH_URL", "http://127.0.0.1:8081", _url)

    app_bundle_id: str = _setting("APP_BUNDLE_ID", "", _str, "appBundleId")
    app_apple_id: str = _setting("APP_APPLE_ID", "", _str, "appAppleId")
    app_team_id: str = _setting("APP_TEAM_ID", "", _str, "appTeamId")
    appstore_environment: str = _setting(
        "APPSTORE_ENVIRONMENT", "Production", _environment, "environment"
    )
    appstore_allow_sandbox: bool = _setting("APPSTORE_ALLOW_SANDBOX", "1", _bool)
    apple_root_certs_dir: str = _setting("APPLE_ROOT_CERTS_DIR", "certs/", _str)
    appstore_online_checks: bool = _setting("APPSTORE_ONLINE_CHECKS", "1", _bool)
    appstore_product_types: tuple[str, ...] = _setting(
        "APPSTORE_PRODUCT_TYPES", "Auto-Renewable Subscription,Non-Consumable", _list
    )
    appstore_product_ids: tuple[str, ...] = _setting("APPSTORE_PRODUCT_IDS", "", _list)
    appstore_grace_seconds: int = _setting("APPSTORE_GRACE_SECONDS", "0", _int)
    appstore_accept_legacy: bool = _setting("APPSTORE_ACCEPT_LEGACY", "0", _bool)
    appstore_status_check: bool = _setting("APPSTORE_STATUS_CHECK", "1", _bool)
    appstore_status_cache_seconds: int = _setting(
        "APPSTORE_STATUS_CACHE_SECONDS", "60", _int
    )
    iap_private_key: Secret = _setting(
        "IAP_PRIVATE_KEY", "", _private_key, "IAPPrivateKey"
    )
    iap_issuer_id: str = _setting("IAP_ISSUER_ID", "", _str, "IAPIssuerId")
    iap_key_id: str = _setting("IAP_KEY_ID", "", _str, "IAPKeyId")
    appstore_api_url_production: str = _setting(
        "APPSTORE_API_URL_PRODUCTION", "https://api.storekit.itunes.apple.com", _url
    )
    appstore_api_url_sandbox: str = _setting(
        "APPSTORE_API_URL_SANDBOX",
        "https://api.storekit-sandbox.itunes.apple.com",
        _url,
    )

    openai_api_key: Secret = _setting("OPENAI_API_KEY", "", _secret, "OpenAI-APIKey")
    openai_organization: str = _setting(
        "OPENAI_ORGANIZATION", "", _str, "OpenAI-Organization"
    )
    openai_base_url: str = _setting(
        "OPENAI_BASE_URL", "https://api.openai.com", _openai_url, "target"
    )
    anthropic_api_key: Secret = _setting(
        "ANTHROPIC_API_KEY", "", _secret, "Anthropic-APIKey"
    )
    anthropic_base_url: str = _setting(
        "ANTHROPIC_BASE_URL", "https://api.anthropic.com", _url
    )
    providers_file: str = _setting("PROVIDERS_FILE", "", _str)
    allowed_paths: tuple[tuple[str, str], ...] = _setting(
        "ALLOWED_PATHS", DEFAULT_ALLOWED_PATHS, _allowed_paths
    )
    allow_key_passthrough: bool = _setting(
        "ALLOW_KEY_PASSTHROUGH", "0", _bool, "allowKeyPassthrough"
    )
    upstream_connect_timeout: float = _setting("UPSTREAM_CONNECT_TIMEOUT", "10", _float)
    upstream_read_timeout: float = _setting("UPSTREAM_READ_TIMEOUT", "600", _float)
    upstream_max_connections: int = _setting("UPSTREAM_MAX_CONNECTIONS", "1000", _int)

    rate_limit_enabled: bool = _setting(
        "RATE_LIMIT_ENABLED", "1", _bool, "enableRateLimiter"
    )
    rate_limit_fail_open: bool = _setting("RATE_LIMIT_FAIL_OPEN", "0", _bool)
    user_minute_rate_limit: int = _setting(
        "USER_MINUTE_RATE_LIMIT", "15", _int, "userMinuteRateLimit"
    )
    user_hourly_rate_limit: int = _setting(
        "USER_HOURLY_RATE_LIMIT", "50", _int, "userHourlyRateLimit"
    )
    user_permanent_block: int = _setting(
        "USER_PERMANENT_BLOCK", "50", _int, "userPermanentBlock"
    )
    anon_minute_rate_limit: int = _setting(
        "ANON_MINUTE_RATE_LIMIT", "60", _int, "anonMinuteRateLimit"
    )
    anon_hourly_rate_limit: int = _setting(
        "ANON_HOURLY_RATE_LIMIT", "200", _int, "anonHourlyRateLimit"
    )
    anon_permanent_block: int = _setting(
        "ANON_PERMANENT_BLOCK", "50", _int, "anonPermanentBlock"
    )
    minute_block_seconds: int = _setting("MINUTE_BLOCK_SECONDS", "300", _int)
    hourly_block_seconds: int = _setting("HOURLY_BLOCK_SECONDS", "3600", _int)
    strike_window_seconds: int = _setting("STRIKE_WINDOW_SECONDS", "86400", _int)
    login_rate_limit: int = _setting("LOGIN_RATE_LIMIT", "30", _int)
    token_accounting: bool = _setting("TOKEN_ACCOUNTING", "1", _bool)
    daily_token_budget: int = _setting("DAILY_TOKEN_BUDGET", "0", _int)
    monthly_token_budget: int = _setting("MONTHLY_TOKEN_BUDGET", "0", _int)
    product_token_budgets: tuple[tuple[str, int | None, int | None], ...] = _setting(
        "PRODUCT_TOKEN_BUDGETS", "", _product_budgets
    )
    model_allowlist: tuple[str, ...] = _setting("MODEL_ALLOWLIST", "", _list)
    max_tokens_ceiling: int = _setting("MAX_TOKENS_CEILING", "0", _int)
    max_tokens_policy: str = _setting("MAX_TOKENS_POLICY", "clamp", _max_tokens_policy)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        _setting("TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES, _networks)
    )
    max_body_bytes: int = _setting("MAX_BODY_BYTES", "26214400", _int)
    client_body_timeout_seconds: float = _setting(
        "CLIENT_BODY_TIMEOUT_SECONDS", "30", _float
    )
    shutdown_timeout_seconds: float = _setting("SHUTDOWN_TIMEOUT_SECONDS", "30", _float)

    log_level: str = _setting("LOG_LEVEL", "info", _str, "logLevel")
    log_format: str = _setting("LOG_FORMAT", "json", _str)

    @property
    def appstore_credentials(self) -> bool:
        """Whether App Store Server API credentials are configured."""
        return bool(self.iap_private_key and self.iap_issuer_id and self.iap_key_id)


def _raw_value(
    meta: Mapping[str, Any], env: Mapping[str, str], dotenv: Mapping[str, str]
) -> tuple[str | None, str]:
    """The raw value of one setting and the name it was found under."""
    names = [meta["env"]] + ([meta["legacy"]] if meta["legacy"] else [])
    for source in (env, dotenv):
        for name in names:
            value = source.get(name)
            if value is not None:
                return value, name
    return None, meta["env"]


def merged_environ(env_file: str | Path | None = "default") -> dict[str, str]:
    """The environment with the `.env` file's values under it (the environment wins),
    for settings read by name at start-up, such as a provider's key variable."""
    if env_file == "default":
        env_file = default_env_file()
    merged: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        merged = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    merged.update(os.environ)
    return merged


def default_env_file() -> str:
    """The `.env` file to read: SUBGATE_ENV_FILE, or `.env` in the working folder."""
    return os.environ.get("SUBGATE_ENV_FILE") or ".env"


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = "default"
) -> Settings:
    """Build the settings, or raise SettingsError with one line per problem."""
    env = os.environ if environ is None else environ
    if env_file == "default":
        env_file = default_env_file()
    dotenv: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None}

    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in fields(Settings):
        raw, name = _raw_value(spec.metadata, env, dotenv)
        if raw is None:
            if spec.metadata["raw_default"] is None:
                problems.append(_missing_message(name))
            continue
        try:
            values[spec.name] = spec.metadata["cast"](raw)
        except ValueError as exc:
            problems.append(f"{name} {exc}.")
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


def load_redis_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = "default"
) -> tuple[str, bool]:
    """Only `REDIS_URL` and `REDIS_CLUSTER`, for tools that run without JWT_SECRET."""
    env = os.environ if environ is None else environ
    if env_file == "default":
        env_file = default_env_file()
    dotenv: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    specs = {spec.name: spec for spec in fields(Settings)}
    values: dict[str, Any] = {}
    for name in ("redis_url", "redis_cluster"):
        meta = specs[name].metadata
        raw, found = _raw_value(meta, env, dotenv)
        try:
            values[name] = meta["cast"](raw if raw is not None else meta["raw_default"])
        except ValueError as exc:
            raise SettingsError([f"{found} {exc}."]) from None
    return values["redis_url"], values["redis_cluster"]


def _missing_message(name: str) -> str:
    return (
        f"{name} is not set. Set it in the environment or in .env; generate one with: "
        "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    )
