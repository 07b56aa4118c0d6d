"""The providers file loader: defaults, routes, per-model data and start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_service.providers.config import (
    ModelConfig,
    ProviderRegistry,
    drop_refused_params,
    load_providers,
)
from shared.settings import Settings, SettingsError, load_settings

EXAMPLES = Path(__file__).parents[2] / "providers" / "examples"


def _settings(**env: str) -> Settings:
    return load_settings({"JWT_SECRET": "s" * 40, **env}, env_file=None)


def _load(
    tmp_path: Path, text: str, environ: dict[str, str] | None = None
) -> ProviderRegistry:
    path = tmp_path / "providers.toml"
    path.write_text(text, encoding="utf-8")
    return load_providers(str(path), _settings(), environ or {})


def test_load_providers_default_routes_claude_to_anthropic() -> None:
    settings = _settings(
        ANTHROPIC_API_KEY="sk-ant-x", ANTHROPIC_BASE_URL="http://h:1/v1"
    )

    registry = load_providers(None, settings, {})

    routed = registry.route("claude-sonnet-4-6")
    assert routed is not None
    provider, model = routed
    assert (provider.name, provider.kind, provider.available) == (
        "anthropic",
        "anthropic",
        True,
    )
    assert provider.api_key.get() == "sk-ant-x"
    assert provider.endpoint("/v1/messages") == "http://h:1/v1/messages"
    assert model.max_tokens == 4096
    assert registry.route("gpt-4o") is None


def test_load_providers_anthropic_without_key_is_unavailable() -> None:
    routed = load_providers(None, _settings(), {}).route("claude-haiku-4-5")

    assert routed is not None
    assert routed[0].available is False


@pytest.mark.parametrize(
    ("model", "dropped"),
    [
        ("claude-opus-4-7", ("temperature", "top_p", "top_k")),
        ("claude-opus-5", ("temperature", "top_p", "top_k")),
        ("claude-sonnet-4-6", ()),
        ("claude-haiku-4-5-20251001", ()),
    ],
)
def test_load_providers_ships_per_model_data(
    model: str, dropped: tuple[str, ...]
) -> None:
    config = load_providers(None, _settings(), {}).model_config(model)

    assert config.drop_params == dropped


def test_load_providers_unknown_claude_model_gets_defaults() -> None:
    config = load_providers(None, _settings(), {}).model_config("claude-unknown-9")

    assert config.name == "*"
    assert config.max_tokens == 4096


def test_model_config_answers_stay_right_past_the_cache_bound() -> None:
    registry = load_providers(None, _settings(), {})
    names = [f"claude-unknown-{i}" for i in range(5000)] + ["claude-opus-4-7"]

    configs = [registry.model_config(name) for name in names * 2]

    assert all(c.name == "*" for c in configs if c is not configs[5000])
    assert configs[5000].drop_params == ("temperature", "top_p", "top_k")
    assert registry.model_config("claude-opus-4-7") is configs[-1]


def test_model_names_too_long_to_be_real_are_not_remembered() -> None:
    registry = load_providers(None, _settings(), {})
    long_name = "claude-" + "x" * 100_000

    assert registry.model_config(long_name).name == "*"
    assert registry.route(long_name) is not None
    assert long_name not in registry._route_cache
    assert long_name not in registry._config_cache


@pytest.mark.parametrize(
    "example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name
)
def test_load_providers_every_shipped_example_loads(example: Path) -> None:
    registry = load_providers(str(example), _settings(), {"GEMINI_API_KEY": "g"})

    file_providers = [p for p in registry.providers.values() if p.name != "anthropic"]
    assert len(file_providers) == 1
    provider = file_providers[0]
    assert provider.kind == "openai"
    assert provider.base_url.startswith(("https://", "http://127.0.0.1"))
    first = next(r for r in registry.routes if r.provider == provider.name)
    sample = first.pattern.replace("*", "x")
    routed = registry.route(sample)
    assert routed is not None and routed[0] is provider
    assert registry.route("claude-sonnet-4-6") is not None


def test_load_providers_example_key_from_environment(tmp_path: Path) -> None:
    registry = load_providers(
        str(EXAMPLES / "groq.toml"), _settings(), {"GROQ_API_KEY": "gsk_secret"}
    )

    routed = registry.route("llama-3.3-70b-versatile")
    assert routed is not None
    provider = routed[0]
    assert provider.available
    assert provider.api_key.get() == "gsk_secret"
    assert "gsk_secret" not in repr(provider)
    assert provider.endpoint("/v1/chat/completions") == (
        "https://api.groq.com/openai/v1/chat/completions"
    )


def test_load_providers_missing_key_is_unavailable_but_routed(tmp_path: Path) -> None:
    registry = load_providers(str(EXAMPLES / "gemini.toml"), _settings(), {})

    routed = registry.route("gemini-2.5-pro")

    assert routed is not None
    assert routed[0].name == "gemini" and not routed[0].available


def test_load_providers_keyless_local_provider_is_available() -> None:
    registry = load_providers(str(EXAMPLES / "ollama.toml"), _settings(), {})

    routed = registry.route("llama3.2")

    assert routed is not None and routed[0].available


def test_load_providers_exact_route_beats_glob(tmp_path: Path) -> None:
    registry = _load(
        tmp_path,
        """
        [providers.wide]
        kind = "openai-compatible"
        base_url = "https://wide.example/v1"
        models = ["claude-*"]

        [providers.narrow]
        kind = "anthropic"
        base_url = "https://narrow.example"
        api_key_env = "NARROW_KEY"
        headers = { "x-team" = "a" }
        models = ["claude-sonnet-4-6"]
        """,
        {"NARROW_KEY": "k"},
    )

    exact = registry.route("claude-sonnet-4-6")
    glob = registry.route("claude-opus-4-7")

    assert exact is not None and exact[0].name == "narrow"
    assert exact[0].extra_headers == {"x-team": "a"}
    assert glob is not None and glob[0].name == "wide"  # file globs before built-in
    assert registry.routed_models() == ["claude-sonnet-4-6"]


def test_load_providers_file_models_override_shipped(tmp_path: Path) -> None:
    registry = _load(
        tmp_path,
        """
        [models."claude-sonnet-4-6"]
        max_tokens = 1000
        drop_params = ["temperature"]
        """,
    )

    config = registry.model_config("claude-sonnet-4-6")

    assert (config.max_tokens, config.drop_params) == (1000, ("temperature",))
    assert registry.model_config("claude-opus-4-7").drop_params  # shipped still used


def test_load_providers_file_can_replace_builtin_anthropic(tmp_path: Path) -> None:
    registry = _load(
        tmp_path,
        """
        [providers.anthropic]
        kind = "anthropic"
        base_url = "https://proxy.example/v1/"
        api_key_env = "MY_ANTHROPIC_KEY"
        """,
        {"MY_ANTHROPIC_KEY": "k"},
    )

    routed = registry.route("claude-sonnet-4-6")

    assert routed is not None
    assert routed[0].base_url == "https://proxy.example"
    assert routed[0].available


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[providers.x\nkind=", "not valid TOML"),
        (
            '[providers.x]\nkind = "grpc"\nbase_url = "https://a"',
            "use 'openai-compatible'",
        ),
        ('[providers.x]\nkind = "anthropic"', "needs base_url"),
        ('[providers.x]\nkind = "anthropic"\nbase_url = "ftp://a"', "needs base_url"),
        (
            '[providers.x]\nkind = "anthropic"\nbase_url = "https://a"\nmodels = "c"',
            "models must be a list",
        ),
        (
            '[providers.x]\nkind = "anthropic"\nbase_url = "https://a"\nkey = "k"',
            "unknown key 'key'",
        ),
        ('[models."m"]\nmax_tokens = 0', "positive integers"),
        ('[models."m"]\nreasoning = "lots"', "reasoning must be one of"),
        ("[routes]\nx = 1", "unknown section [routes]"),
    ],
)
def test_load_providers_bad_file_is_a_one_line_error(
    tmp_path: Path, text: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        _load(tmp_path, text)

    assert len(caught.value.problems) == 1
    assert "\n" not in caught.value.problems[0]
    assert fragment in caught.value.problems[0]


def test_load_providers_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_providers(str(tmp_path / "nope.toml"), _settings(), {})

    assert "cannot be read" in caught.value.problems[0]


def test_drop_refused_params_for_openai_compatible_body() -> None:
    model = ModelConfig(
        drop_params=("logprobs",), exclusive_params=("temperature", "top_p")
    )
    body = {"model": "m", "logprobs": True, "temperature": 0.1, "top_p": 0.5}

    assert drop_refused_params(body, model) == {"model": "m", "temperature": 0.1}
