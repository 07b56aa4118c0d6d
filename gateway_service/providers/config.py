"""Providers, model routes and per-model settings, read once at start-up.

The built-in provider is Anthropic (routing `claude-*`); `PROVIDERS_FILE` (TOML) adds
OpenAI-compatible or Anthropic providers, routes and per-model data. Per-model data for
Claude models ships in `models.toml` next to this module. The file format is described
in `providers/README.md` at the repository root.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from shared.settings import Secret, Settings, SettingsError

ProviderKind = Literal["openai", "anthropic"]
ReasoningMode = Literal["adaptive", "budget", "none"]

MODELS_FILE = Path(__file__).with_name("models.toml")
ANTHROPIC = "anthropic"

_KINDS: dict[str, ProviderKind] = {
    "openai-compatible": "openai",
    "openai": "openai",
    "anthropic": "anthropic",
}
_REASONING = ("adaptive", "budget", "none")
_PROVIDER_KEYS = {"kind", "base_url", "api_key_env", "headers", "models"}
_MODEL_KEYS = {
    "max_tokens",
    "max_tokens_limit",
    "drop_params",
    "exclusive_params",
    "reasoning",
    "structured_outputs",
}


@dataclass(frozen=True)
class ModelConfig:
    """What one model accepts: defaults and parameters to leave out."""

    name: str = "*"
    max_tokens: int = 4096
    max_tokens_limit: int | None = None
    drop_params: tuple[str, ...] = ()
    exclusive_params: tuple[str, ...] = ()
    reasoning: ReasoningMode = "none"
    structured_outputs: bool = False


@dataclass(frozen=True)
class Provider:
    """One upstream: where it is, how to authenticate, what it speaks."""

    name: str
    kind: ProviderKind
    base_url: str
    api_key_env: str = ""
    api_key: Secret = field(default_factory=lambda: Secret(""))
    extra_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        """False when the provider needs a key and none is set: answer 503."""
        return bool(self.api_key) or not self.api_key_env

    def endpoint(self, path: str) -> str:
        """The upstream URL for a client path such as `/v1/chat/completions`.

        An OpenAI-compatible base URL already holds its version prefix (as the openai
        SDK's `base_url` does), so the client's `/v1` is dropped; an Anthropic base URL
        is the host, and the path is kept whole.
        """
        if self.kind == "openai" and path.startswith("/v1/"):
            path = path[len("/v1") :]
        return self.base_url + path


@dataclass(frozen=True)
class Route:
    """A model name or fnmatch glob sent to a named provider."""

    pattern: str
    provider: str

    @property
    def is_glob(self) -> bool:
        return any(char in self.pattern for char in "*?[")

    def matches(self, model: str) -> bool:
        if self.is_glob:
            return fnmatch.fnmatchcase(model, self.pattern)
        return model == self.pattern


_ROUTE_CACHE_SIZE = 4096
_CACHED_NAME_LENGTH = 256
T = TypeVar("T")


@dataclass(frozen=True)
class ProviderRegistry:
    """Every configured provider, its routes and per-model data."""

    providers: Mapping[str, Provider]
    routes: tuple[Route, ...]
    models: tuple[tuple[str, ModelConfig], ...] = ()
    default_model: ModelConfig = ModelConfig()
    _route_cache: dict[str, tuple[Provider, ModelConfig] | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    _config_cache: dict[str, ModelConfig] = field(
        default_factory=dict, compare=False, repr=False
    )

    def route(self, model: str) -> tuple[Provider, ModelConfig] | None:
        """The provider for this model and its settings, or None (send to OpenAI).

        An exact route wins over a glob; globs are tried in file order, the
        PROVIDERS_FILE's before the built-in `claude-*`. Answers are remembered per
        model name (a bounded cache: routing runs several times per request).
        """
        return _remembered(self._route_cache, model, self._find_route)

    def _find_route(self, model: str) -> tuple[Provider, ModelConfig] | None:
        exact = [r for r in self.routes if not r.is_glob and r.matches(model)]
        globs = [r for r in self.routes if r.is_glob and r.matches(model)]
        for route in exact + globs:
            return self.providers[route.provider], self.model_config(model)
        return None

    def model_config(self, model: str) -> ModelConfig:
        """Per-model data: exact name first, then the first matching glob."""
        return _remembered(self._config_cache, model, self._find_model_config)

    def _find_model_config(self, model: str) -> ModelConfig:
        for pattern, config in self.models:
            if pattern == model:
                return config
        for pattern, config in self.models:
            if fnmatch.fnmatchcase(model, pattern):
                return config
        return self.default_model

    def routed_models(self) -> list[str]:
        """The exact model names routed here (for `GET /v1/models`)."""
        return [r.pattern for r in self.routes if not r.is_glob]


def _remembered(cache: dict[str, T], model: str, find: Callable[[str], T]) -> T:
    """`find(model)`, remembered in a cache bounded to _ROUTE_CACHE_SIZE names (and
    only for names of a sensible length: a client chooses them)."""
    if len(model) > _CACHED_NAME_LENGTH:
        return find(model)
    if model in cache:
        return cache[model]
    if len(cache) >= _ROUTE_CACHE_SIZE:
        cache.clear()
    cache[model] = answer = find(model)
    return answer


def drop_refused_params(body: dict[str, Any], model: ModelConfig) -> dict[str, Any]:
    """A copy of an OpenAI-style body without the parameters this model refuses."""
    kept = {k: v for k, v in body.items() if k not in model.drop_params}
    present = [name for name in model.exclusive_params if kept.get(name) is not None]
    for name in present[1:]:
        del kept[name]
    return kept


def load_providers(
    path: str | None, settings: Settings, environ: Mapping[str, str]
) -> ProviderRegistry:
    """Build the registry from the defaults and an optional PROVIDERS_FILE.

    `environ` supplies the key variables named by `api_key_env` (pass the same mapping
    the settings were read from, .env included). Raises SettingsError, one line per
    problem, when the file cannot be used.
    """
    shipped = _read_toml(MODELS_FILE, "the shipped models.toml")
    default_model, shipped_models = _parse_models(shipped, "models.toml")
    providers: dict[str, Provider] = {ANTHROPIC: _default_anthropic(settings)}
    routes = [Route("claude-*", ANTHROPIC)]
    if not path:
        return ProviderRegistry(providers, tuple(routes), shipped_models, default_model)

    data = _read_toml(Path(path), f"PROVIDERS_FILE {path}")
    problems = _unknown_sections(data, path)
    file_routes: list[Route] = []
    for name, table in _table(data, "providers", path, problems).items():
        provider, patterns = _parse_provider(name, table, environ, path, problems)
        if provider is not None:
            providers[name] = provider
            file_routes.extend(Route(pattern, name) for pattern in patterns)
    file_default, file_models = _parse_models(data, path, problems, default_model)
    if problems:
        raise SettingsError(problems)

    return ProviderRegistry(
        providers,
        tuple(file_routes + routes),
        file_models + shipped_models,
        file_default,
    )


def _default_anthropic(settings: Settings) -> Provider:
    return Provider(
        name=ANTHROPIC,
        kind="anthropic",
        base_url=_strip_v1(settings.anthropic_base_url),
        api_key_env="ANTHROPIC_API_KEY",
        api_key=settings.anthropic_api_key,
    )


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise SettingsError([f"{label} cannot be read ({exc.strerror})."]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{label} is not valid TOML ({exc})."]) from None


def _unknown_sections(data: Mapping[str, Any], path: str) -> list[str]:
    unknown = sorted(set(data) - {"providers", "models", "defaults"})
    return [
        f"PROVIDERS_FILE {path}: unknown section [{name}]; use [providers.<name>], "
        '[models."<model>"] or [defaults].'
        for name in unknown
    ]


def _table(
    data: Mapping[str, Any], key: str, path: str, problems: list[str]
) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        problems.append(f"PROVIDERS_FILE {path}: [{key}] must be a table.")
        return {}
    return value


def _parse_provider(
    name: str,
    table: Any,
    environ: Mapping[str, str],
    path: str,
    problems: list[str],
) -> tuple[Provider | None, list[str]]:
    where = f"PROVIDERS_FILE {path}: provider {name!r}"
    if not isinstance(table, dict):
        problems.append(f"{where} must be a table [providers.{name}].")
        return None, []
    before = len(problems)
    for key in sorted(set(table) - _PROVIDER_KEYS):
        problems.append(f"{where} has an unknown key {key!r}.")

    kind = _KINDS.get(str(table.get("kind", "")))
    if kind is None:
        problems.append(
            f"{where} has kind {table.get('kind')!r}; "
            "use 'openai-compatible' or 'anthropic'."
        )
    base_url = table.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(
        ("http://", "https://")
    ):
        problems.append(f"{where} needs base_url starting with http:// or https://.")
    key_env = table.get("api_key_env", "")
    headers = table.get("headers", {})
    patterns = table.get("models", [])
    if not isinstance(key_env, str):
        problems.append(f"{where}: api_key_env must be a variable name.")
    if not isinstance(headers, dict) or not all(
        isinstance(v, str) for v in headers.values()
    ):
        problems.append(f"{where}: headers must be a table of strings.")
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        problems.append(f"{where}: models must be a list of names or globs.")
    if len(problems) > before:
        return None, []

    assert kind is not None and isinstance(base_url, str)
    url = base_url.rstrip("/")
    provider = Provider(
        name=name,
        kind=kind,
        base_url=_strip_v1(url) if kind == "anthropic" else url,
        api_key_env=key_env,
        api_key=Secret(environ.get(key_env, "").strip() if key_env else ""),
        extra_headers=dict(headers),
    )
    return provider, list(patterns)


def _parse_models(
    data: Mapping[str, Any],
    path: str,
    problems: list[str] | None = None,
    base: ModelConfig | None = None,
) -> tuple[ModelConfig, tuple[tuple[str, ModelConfig], ...]]:
    """The [defaults] table and the [models."pattern"] tables of one file."""
    errors: list[str] = [] if problems is None else problems
    default = _model_config("*", data.get("defaults", {}), base or ModelConfig(), path)
    default_model = ModelConfig() if isinstance(default, str) else default
    if isinstance(default, str):
        errors.append(default)

    models: list[tuple[str, ModelConfig]] = []
    for pattern, table in dict(data.get("models", {})).items():
        config = _model_config(pattern, table, default_model, path)
        if isinstance(config, str):
            errors.append(config)
        else:
            models.append((pattern, config))
    if problems is None and errors:
        raise SettingsError(errors)
    return default_model, tuple(models)


def _model_config(
    pattern: str, table: Any, base: ModelConfig, path: str
) -> ModelConfig | str:
    """One model's settings on top of the defaults, or a one-line problem."""
    where = f"{path}: model {pattern!r}"
    if not isinstance(table, dict):
        return f"{where} must be a table."
    unknown = sorted(set(table) - _MODEL_KEYS)
    if unknown:
        return f"{where} has unknown keys {', '.join(unknown)}."
    max_tokens = table.get("max_tokens", base.max_tokens)
    limit = table.get("max_tokens_limit", base.max_tokens_limit)
    drop = table.get("drop_params", list(base.drop_params))
    exclusive = table.get("exclusive_params", list(base.exclusive_params))
    reasoning = table.get("reasoning", base.reasoning)
    structured = table.get("structured_outputs", base.structured_outputs)

    if not _positive_int(max_tokens) or (
        limit is not None and not _positive_int(limit)
    ):
        return f"{where}: max_tokens and max_tokens_limit must be positive integers."
    if not _strings(drop) or not _strings(exclusive):
        return f"{where}: drop_params and exclusive_params must be lists of names."
    if reasoning not in _REASONING:
        return f"{where}: reasoning must be one of {', '.join(_REASONING)}."
    if not isinstance(structured, bool):
        return f"{where}: structured_outputs must be true or false."
    return ModelConfig(
        name=pattern,
        max_tokens=max_tokens,
        max_tokens_limit=limit,
        drop_params=tuple(drop),
        exclusive_params=tuple(exclusive),
        reasoning=reasoning,
        structured_outputs=structured,
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _strip_v1(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url
