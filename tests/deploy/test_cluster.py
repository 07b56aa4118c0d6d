"""The deployment topology, proven on loopback: nginx (Debian's package) with the shared
proxy rules in front of three gateway replicas, one auth service and one Redis.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auth_service.dev_storekit import DevChain
from scripts.cluster import find_nginx
from tests.conftest import BUNDLE_ID
from tests.support.cluster import Cluster
from tests.support.fake_openai import FakeOpenAI, chunk, stream_chunks
from tests.support.fake_upstream import Answer
from tests.support.redis_server import free_port

pytestmark = pytest.mark.skipif(
    find_nginx() is None,
    reason="nginx is not installed (apt-get install nginx-light); .ci/run installs it",
)

MINUTE_LIMIT = 5
PASSTHROUGH_KEY = "sk-load-test-key-0000000000000000"
# After draining, uvicorn re-raises the SIGTERM it caught, so the status is 0 or
# "terminated by SIGTERM"; a replica that had to be killed would show -9.
CLEAN_EXITS = (0, -signal.SIGTERM)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[Cluster]:
    """Subscribers get a small minute limit and are banned at the second strike;
    the load generators use a pass-through key with limits they never reach."""
    env = {
        **base_env,
        "AUTH_METRICS_PORT": str(free_port()),
        "USER_MINUTE_RATE_LIMIT": str(MINUTE_LIMIT),
        "USER_HOURLY_RATE_LIMIT": "1000",
        "USER_PERMANENT_BLOCK": "2",
        "ALLOW_KEY_PASSTHROUGH": "1",
        "ANON_MINUTE_RATE_LIMIT": "1000000",
        "ANON_HOURLY_RATE_LIMIT": "1000000",
        "SHUTDOWN_TIMEOUT_SECONDS": "10",
    }
    running = Cluster(tmp_path_factory.mktemp("cluster"), env)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def openai(openai_upstream: FakeOpenAI) -> FakeOpenAI:
    openai_upstream.reset()
    return openai_upstream


def login(cluster: Cluster, chain: DevChain, otid: str | None = None) -> str:
    jws = chain.sign_transaction(bundle_id=BUNDLE_ID, original_transaction_id=otid)
    response = httpx.post(cluster.url + "/appstore", content=jws, timeout=10)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def chat(cluster: Cluster, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(
        cluster.url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=10
    )


class Load:
    """Threads sending chat requests (plain and streamed) through nginx until stopped;
    every status and transport error is recorded."""

    def __init__(self, url: str, workers: int = 3) -> None:
        self.url = url
        self.workers = workers
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, args=(n,), daemon=True)
            for n in range(workers)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        self.wait_for(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values()) + len(self.errors)

    def wait_for(self, more: int, timeout: float = 10.0) -> None:
        """Wait until `more` further requests have been answered."""
        target = self.total + more
        deadline = time.monotonic() + timeout
        while self.total < target:
            assert time.monotonic() < deadline, "the load stalled"
            time.sleep(0.01)

    def failures(self) -> list[str]:
        """One entry per failed request: a 5xx answer or a transport error."""
        with self._lock:
            bad = [
                f"HTTP {s}"
                for s, n in self.statuses.items()
                if s >= 500
                for _ in range(n)
            ]
            return bad + list(self.errors)

    def _work(self, number: int) -> None:
        headers = {"Authorization": f"Bearer {PASSTHROUGH_KEY}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=15) as client:
            streamed = number % 2 == 1
            while not self._stop.is_set():
                try:
                    status = self._one(client, streamed)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.statuses[status] += 1

    @staticmethod
    def _one(client: httpx.Client, streamed: bool) -> int:
        if not streamed:
            return client.post("/v1/chat/completions", json=CHAT).status_code
        body = {**CHAT, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = b"".join(response.iter_bytes())
            if response.status_code == 200 and not text.endswith(b"data: [DONE]\n\n"):
                raise httpx.RemoteProtocolError("stream ended early")
            return response.status_code


def test_cluster_login_and_requests_pass_through_nginx(
    cluster: Cluster, dev_chain: DevChain, openai: FakeOpenAI
) -> None:
    token = login(cluster, dev_chain)

    response = chat(cluster, token)

    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert response.headers["x-request-id"]


def test_cluster_stream_is_relayed_before_the_provider_finishes(
    cluster: Cluster, dev_chain: DevChain, openai: FakeOpenAI
) -> None:
    token = login(cluster, dev_chain)
    gate = threading.Event()
    first = chunk({"role": "assistant", "content": "First"})
    openai.queue(Answer(stream=[first, gate, *stream_chunks([" rest"])[1:]]))
    headers = {"Authorization": f"Bearer {token}"}
    body = {**CHAT, "stream": True}

    with httpx.stream(
        "POST",
        cluster.url + "/v1/chat/completions",
        json=body,
        headers=headers,
        timeout=5,
    ) as response:
        pieces = response.iter_bytes()
        received = next(pieces)
        assert b"First" in received
        assert not gate.is_set()
        gate.set()
        received += b"".join(pieces)

    assert received.endswith(b"data: [DONE]\n\n")
    assert b" rest" in received


def test_cluster_replicas_share_one_user_limit(
    cluster: Cluster, dev_chain: DevChain, openai: FakeOpenAI
) -> None:
    otid = str(2_100_000_000_000_000 + time.time_ns() % 10**12)
    token = login(cluster, dev_chain, otid)

    statuses = [chat(cluster, token).status_code for _ in range(MINUTE_LIMIT + 2)]

    assert statuses == [200] * MINUTE_LIMIT + [429, 403]
    served_by = [g for g in cluster.gateways if f'"txn:{otid}"' in g.logs()]
    assert len(served_by) >= 2
    assert len(openai.requests) == MINUTE_LIMIT


def test_cluster_metrics_are_not_reachable_through_nginx(cluster: Cluster) -> None:
    through_nginx = httpx.get(cluster.url + "/metrics", timeout=5)

    assert through_nginx.status_code == 404
    assert "subgate_requests_total" not in through_nginx.text
    assert cluster.metric(cluster.gateways[0], "subgate_active_streams") == 0


def test_cluster_killing_a_gateway_loses_only_its_in_flight_stream(
    cluster: Cluster, openai: FakeOpenAI
) -> None:
    gate = threading.Event()
    openai.queue(Answer(stream=[chunk({"content": "held"}), gate]))
    body = {**CHAT, "stream": True}
    headers = {"Authorization": f"Bearer {PASSTHROUGH_KEY}"}
    with httpx.stream(
        "POST",
        cluster.url + "/v1/chat/completions",
        json=body,
        headers=headers,
        timeout=10,
    ) as held:
        pieces = held.iter_bytes()
        assert b"held" in next(pieces)
        victim = next(
            g
            for g in cluster.gateways
            if cluster.metric(g, "subgate_active_streams") == 1
        )
        with Load(cluster.url) as load:
            victim.kill()
            # Whatever was in flight on the victim has now failed or been replayed.
            load.wait_for(2 * load.workers)
            lost = load.failures()
            load.wait_for(60)
            after = load.failures()
        with pytest.raises(httpx.HTTPError):
            b"".join(pieces)
    gate.set()
    victim.start(ready_path="/readyz")

    # At most one request per load worker was in flight on the victim when it died
    # (a stream it had started to answer); nothing was lost after that.
    assert len(lost) <= load.workers, lost
    assert after == lost


def test_cluster_rolling_restart_under_load_has_no_5xx_and_keeps_bans(
    cluster: Cluster, dev_chain: DevChain, openai: FakeOpenAI
) -> None:
    banned = login(cluster, dev_chain)
    statuses = [chat(cluster, banned).status_code for _ in range(MINUTE_LIMIT + 2)]
    assert statuses[-1] == 403

    exits = []
    with Load(cluster.url) as load:
        for gateway in cluster.gateways:
            exits.append(cluster.restart_gateway(gateway))
            load.wait_for(20)

    unclean = [(code, log) for code, log in exits if code not in CLEAN_EXITS]
    assert unclean == []
    assert load.failures() == []
    assert load.statuses[200] == load.total
    after = chat(cluster, banned)
    assert after.status_code == 403
    assert after.json()["error"]["code"] == "banned"


def test_cluster_config_is_rendered_under_its_prefix(cluster: Cluster) -> None:
    assert cluster.nginx is not None
    conf = Path(cluster.nginx.conf).read_text()

    for gateway in cluster.gateways:
        assert f"server 127.0.0.1:{gateway.port} " in conf
    assert f"listen 127.0.0.1:{cluster.nginx.port};" in conf
    assert "subgate-proxy.conf;" in conf
