"""`make cluster`: the production topology on loopback, in the foreground.

Redis (the embedded server when REDIS_URL does not answer), auth, three gateway
replicas on free ports and nginx in front of them with the same proxy rules as
docker-compose (deploy/nginx/subgate-proxy.conf). nginx listens on GATEWAY_PORT
(default 8080), so apps use the same URL as with `make run`. Ctrl-C stops everything.

The nginx pieces (finding the binary, writing its configuration, its command line) are
also used by the topology test (tests/support/cluster.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import run_stack  # noqa: E402
from scripts.run_stack import Stack, say  # noqa: E402

NGINX_DIR = ROOT / "deploy" / "nginx"
PROXY_CONF = NGINX_DIR / "subgate-proxy.conf"
CLUSTER_TEMPLATE = NGINX_DIR / "cluster.conf.template"
NGINX_CANDIDATES = (
    "/usr/sbin/nginx",
    "/usr/local/sbin/nginx",
    "/usr/local/bin/nginx",
    "/opt/homebrew/bin/nginx",
)
GATEWAY_REPLICAS = 3
# Like compose.conf: a replica that fails is skipped for two seconds; when every
# replica has just failed (a quick rolling restart), the same replicas are tried again
# as backups instead of answering 502 "no live upstreams".
PRIMARY = "max_fails=1 fail_timeout=2s"
BACKUP = "backup max_fails=0"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


# --- nginx ---------------------------------------------------------------------------


def find_nginx() -> str | None:
    """The nginx binary on PATH or in the usual places, or None."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in NGINX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def write_nginx_config(prefix: Path, listen: str, gateway_ports: list[int]) -> Path:
    """Write nginx.conf for `gateway_ports` under `prefix`; returns its path.

    `listen` is nginx's listen argument, e.g. `127.0.0.1:8080`. Everything nginx writes
    (pid, logs, temporary bodies) stays under `prefix`.
    """
    prefix.mkdir(parents=True, exist_ok=True)
    for name in TEMP_DIRS:
        (prefix / name).mkdir(exist_ok=True)
    lines = [f"server 127.0.0.1:{port} {PRIMARY};" for port in gateway_ports]
    lines += [f"server 127.0.0.1:{port} {BACKUP};" for port in gateway_ports]
    servers = "\n".join(" " * 8 + line for line in lines)
    text = Template(CLUSTER_TEMPLATE.read_text()).substitute(
        prefix=prefix,
        servers=servers,
        listen=listen,
        proxy_conf=PROXY_CONF,
    )
    if os.geteuid() == 0:
        # Started by root, nginx would run its workers as `nobody`, which may not
        # write the temporary folders above; keep them as the invoking user.
        text = "user root;\n" + text
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def nginx_command(
    nginx: str, prefix: Path, conf: Path, *, test: bool = False
) -> list[str]:
    """nginx in the foreground with `conf`; with `test`, only check the config."""
    args = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    if test:
        return [*args, "-t", "-q"]
    return [*args, "-g", "daemon off;"]


# --- make cluster --------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_environment(base: dict[str, str], port: int) -> dict[str, str]:
    """One replica's environment: its own public and metrics ports on loopback."""
    return {
        **base,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_METRICS_PORT": str(free_port()),
    }


def main() -> int:
    nginx = find_nginx()
    if nginx is None:
        print(
            "make cluster needs nginx: apt-get install nginx-light (Debian/Ubuntu) "
            "or brew install nginx (macOS).",
            file=sys.stderr,
        )
        return 1
    env_file = Path(os.environ.get("SUBGATE_ENV_FILE", ".env")).resolve()
    data_dir = Path(os.environ.get("SUBGATE_DATA_DIR", ".data")).resolve()
    os.chdir(ROOT)
    if run_stack.ensure_env_file(env_file):
        say("stack", f"created {env_file} with a generated JWT_SECRET")
    settings = run_stack.load(env_file)
    for note in run_stack.disabled_features(settings):
        say("stack", f"off: {note}")

    stack = Stack(settings)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stack.on_signal)
    with tempfile.TemporaryDirectory(prefix="subgate-nginx-") as prefix:
        try:
            return _run(stack, nginx, Path(prefix), data_dir, env_file)
        finally:
            stack.stop()


def _run(stack: Stack, nginx: str, prefix: Path, data_dir: Path, env_file: Path) -> int:
    settings = stack.settings
    env = run_stack.child_environment(env_file, settings)
    stack.redis = run_stack.start_redis(stack, data_dir, env)
    start = run_stack.start_child
    stack.services.append(start("auth", [sys.executable, "-m", "auth_service"], env))
    ports = [free_port() for _ in range(GATEWAY_REPLICAS)]
    for number, port in enumerate(ports, start=1):
        args = [sys.executable, "-m", "gateway_service"]
        child = start(f"gw{number}", args, gateway_environment(env, port))
        stack.services.append(child)
    host = run_stack.client_host(settings.gateway_host)
    conf = write_nginx_config(prefix, f"{host}:{settings.gateway_port}", ports)
    stack.services.append(start("nginx", nginx_command(nginx, prefix, conf), env))
    url = f"http://{host}:{settings.gateway_port}"
    threading.Thread(target=_announce, args=(stack, url, ports), daemon=True).start()
    return stack.wait()


def _announce(stack: Stack, url: str, ports: list[int]) -> None:
    checks = [f"{url}/nginx-health"] + [f"http://127.0.0.1:{p}/readyz" for p in ports]
    deadline = time.monotonic() + run_stack.READY_TIMEOUT
    while not stack.stop_requested and time.monotonic() < deadline:
        if all(run_stack._answers_ok(check) for check in checks):
            replicas = ", ".join(str(port) for port in ports)
            say("stack", f"gateway replicas on 127.0.0.1 ports {replicas}")
            say("stack", f"ready: point your app at {url} (Ctrl-C stops)")
            return
        time.sleep(0.2)
    if not stack.stop_requested:
        say("stack", "the cluster is not ready; see the output above")


if __name__ == "__main__":
    sys.exit(main())
