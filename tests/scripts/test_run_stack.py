"""The pieces of `make run`'s stack script that decide things before anything starts."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from dotenv import dotenv_values

from scripts import run_stack
from shared.settings import Settings, load_settings
from tests.support.redis_server import free_port

SECRET = "s" * 40


def settings(**env: str) -> Settings:
    return load_settings({"JWT_SECRET": SECRET, **env}, env_file=None)


def test_ensure_env_file_creates_a_private_file_with_a_usable_secret(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sub" / ".env"

    assert run_stack.ensure_env_file(path) is True

    secret = dotenv_values(path)["JWT_SECRET"]
    assert secret and len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_settings({}, env_file=path).jwt_secret.get() == secret


def test_ensure_env_file_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("OPENAI_API_KEY=mine\n")

    assert run_stack.ensure_env_file(path) is False
    assert path.read_text() == "OPENAI_API_KEY=mine\n"


def test_ensure_env_file_generates_a_new_secret_each_time(tmp_path: Path) -> None:
    run_stack.ensure_env_file(tmp_path / "a")
    run_stack.ensure_env_file(tmp_path / "b")

    assert dotenv_values(tmp_path / "a") != dotenv_values(tmp_path / "b")


def test_disabled_features_names_every_missing_setting(tmp_path: Path) -> None:
    notes = " ".join(
        run_stack.disabled_features(settings(APPLE_ROOT_CERTS_DIR=str(tmp_path)))
    )

    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "APP_BUNDLE_ID"):
        assert name in notes
    assert "IAP_PRIVATE_KEY" in notes
    assert "No trusted roots" in notes
    assert "503 provider_unavailable" in notes


def test_disabled_features_is_empty_when_everything_is_configured(
    tmp_path: Path,
) -> None:
    (tmp_path / "root.cer").write_bytes(b"x")
    configured = settings(
        OPENAI_API_KEY="sk-x",
        ANTHROPIC_API_KEY="sk-ant-x",
        APP_BUNDLE_ID="com.example.app",
        APP_APPLE_ID="123",
        APPLE_ROOT_CERTS_DIR=str(tmp_path),
        IAP_PRIVATE_KEY="pem",
        IAP_ISSUER_ID="issuer",
        IAP_KEY_ID="key",
    )

    assert run_stack.disabled_features(configured) == []


def test_disabled_features_warns_about_unsigned_testing_environments() -> None:
    notes = run_stack.disabled_features(settings(APPSTORE_ENVIRONMENT="Xcode"))

    assert any("APPSTORE_ENVIRONMENT=Xcode" in note for note in notes)


def test_embedded_redis_args_serve_a_loopback_url_with_persistence(
    tmp_path: Path,
) -> None:
    args = run_stack.embedded_redis_args("redis://:pw@127.0.0.1:6390/0", tmp_path)

    assert Path(args[0]).name.startswith("valkey-server")
    assert args[args.index("--port") + 1] == "6390"
    assert args[args.index("--bind") + 1] == "127.0.0.1"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == str(tmp_path)
    assert args[args.index("--requirepass") + 1] == "pw"


def test_embedded_redis_args_serve_a_unix_socket(tmp_path: Path) -> None:
    args = run_stack.embedded_redis_args("unix:///tmp/subgate.sock", tmp_path)

    assert args[args.index("--unixsocket") + 1] == "/tmp/subgate.sock"
    assert args[args.index("--port") + 1] == "0"


@pytest.mark.parametrize(
    "url", ["redis://redis.example.com:6379/0", "rediss://127.0.0.1:6379/0"]
)
def test_embedded_redis_args_refuse_what_cannot_be_served_locally(
    url: str, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match="does not answer"):
        run_stack.embedded_redis_args(url, tmp_path)


def test_child_environment_points_the_gateway_at_a_moved_auth_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"JWT_SECRET={SECRET}\nAUTH_PORT=9181\n")
    monkeypatch.delenv("AUTH_URL", raising=False)
    monkeypatch.delenv("LOG_FORMAT", raising=False)

    env = run_stack.child_environment(env_file, load_settings({}, env_file=env_file))

    assert env["AUTH_URL"] == "http://127.0.0.1:9181"
    assert env["LOG_FORMAT"] == "text"
    assert env["SUBGATE_ENV_FILE"] == str(env_file)


def test_child_environment_leaves_an_auth_url_set_in_the_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"JWT_SECRET={SECRET}\nAUTH_URL=http://auth:1\n")
    monkeypatch.delenv("AUTH_URL", raising=False)

    env = run_stack.child_environment(env_file, load_settings({}, env_file=env_file))

    assert "AUTH_URL" not in env


def test_busy_ports_names_a_port_another_process_listens_on() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        free = free_port()

        busy = run_stack.busy_ports(
            settings(
                GATEWAY_PORT=str(taken),
                AUTH_PORT=str(free),
                GATEWAY_METRICS_PORT="0",
                AUTH_METRICS_PORT="0",
            )
        )

    assert busy == [f"GATEWAY_PORT {taken}"]
