"""The nginx configuration passes `nginx -t`: the `make cluster` wrapper as generated,
and the docker-compose wrapper (where this nginx predates `server ... resolve`, that one
parameter and Docker's names are swapped for loopback ones). Both wrap the same proxy
rules, which keep streams unbuffered and never expose a metrics port.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from scripts.cluster import (
    PROXY_CONF,
    find_nginx,
    nginx_command,
    write_nginx_config,
)

NGINX_DIR = PROXY_CONF.parent
COMPOSE_CONF = NGINX_DIR / "compose.conf"

needs_nginx = pytest.mark.skipif(
    find_nginx() is None,
    reason="nginx is not installed (apt-get install nginx-light); .ci/run installs it",
)


def nginx_version(nginx: str) -> tuple[int, ...]:
    result = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", result.stderr)
    assert found, result.stderr
    return tuple(int(part) for part in found.groups())


def check(nginx: str, prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        nginx_command(nginx, prefix, conf, test=True),
        capture_output=True,
        text=True,
        timeout=30,
    )


@needs_nginx
def test_nginx_cluster_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = find_nginx()
    assert nginx is not None
    conf = write_nginx_config(tmp_path, "127.0.0.1:18080", [18081, 18082, 18083])

    result = check(nginx, tmp_path, conf)

    assert result.returncode == 0, result.stderr


@needs_nginx
def test_nginx_compose_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = find_nginx()
    assert nginx is not None
    text = COMPOSE_CONF.read_text()
    # Temp paths first: the repository itself may live under /tmp.
    text = text.replace("/tmp/", f"{tmp_path}/")
    text = text.replace("/etc/nginx/subgate-proxy.conf", str(PROXY_CONF))
    text = text.replace("gateway:8080", "127.0.0.1:18081")
    if nginx_version(nginx) < (1, 27, 3):
        text = text.replace(" resolve ", " ")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)

    result = check(nginx, tmp_path, conf)

    assert result.returncode == 0, result.stderr


@needs_nginx
def test_nginx_t_rejects_a_broken_proxy_rule(tmp_path: Path) -> None:
    nginx = find_nginx()
    assert nginx is not None
    conf = write_nginx_config(tmp_path, "127.0.0.1:18080", [18081])
    conf.write_text(conf.read_text().replace(str(PROXY_CONF), str(tmp_path / "x")))
    (tmp_path / "x").write_text("location / { proxy_buffering sideways; }\n")

    assert check(nginx, tmp_path, conf).returncode != 0


def directives(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_nginx_proxy_rules_suit_streams() -> None:
    rules = directives(PROXY_CONF)

    for expected in (
        "proxy_pass http://subgate_gateways;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "proxy_read_timeout 660s;",
    ):
        assert expected in rules


def test_nginx_wrappers_keep_connections_to_the_replicas_alive() -> None:
    template = NGINX_DIR / "cluster.conf.template"
    for wrapper in (COMPOSE_CONF, template):
        rules = directives(wrapper)
        assert "upstream subgate_gateways {" in rules
        assert any(rule.startswith("keepalive ") for rule in rules), wrapper.name
        assert any(rule.startswith("include ") for rule in rules), wrapper.name


def test_nginx_files_never_name_a_metrics_port() -> None:
    for path in NGINX_DIR.iterdir():
        text = "\n".join(directives(path))
        assert "9090" not in text and "9091" not in text, path.name
        assert "/metrics" not in text, path.name
