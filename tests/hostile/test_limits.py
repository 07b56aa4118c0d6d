"""Size and time limits: the gateway's body cap (MAX_BODY_BYTES), and the header cap
and slow-client (slowloris) timeouts, which are the load balancer's job.

Decision (see the report and README "Limits"): uvicorn with httptools has no limit on
header size and no deadline for reading a request, and an ASGI application cannot see
header reads. Subgate is deployed behind nginx (docker-compose and `make cluster` ship
deploy/nginx/subgate-proxy.conf), whose `large_client_header_buffers` (4 x 16k)
caps headers and whose `client_header_timeout` / `client_body_timeout` (10 s / 30 s)
drop slow clients; nginx also buffers request bodies, so a slow upload never ties up a
gateway. The tests below run nginx with the shipped proxy rules, shortening only the
two timeouts so the suite stays fast, and show that a gateway reached directly keeps
serving others while slow clients hang on (asyncio), so it must not be exposed alone.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from auth_service.dev_storekit import DevChain
from scripts.cluster import PROXY_CONF, find_nginx
from tests.conftest import BUNDLE_ID, Stack
from tests.hostile.support import (
    OwnStack,
    assert_error_shape,
    http_request,
    own_stack,
    raw_request,
)
from tests.support.cluster import NginxProcess

BODY_CAP = 4096
BODY_TIMEOUT = 1
NGINX_TIMEOUT = 2


@pytest.fixture(scope="module")
def capped(
    tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]
) -> Iterator[OwnStack]:
    env = {
        **base_env,
        "MAX_BODY_BYTES": str(BODY_CAP),
        "CLIENT_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    }
    with own_stack(tmp_path_factory.mktemp("capped"), env) as stack:
        yield stack


@pytest.fixture(scope="module")
def capped_token(capped: OwnStack, dev_chain: DevChain) -> str:
    jws = dev_chain.sign_transaction(bundle_id=BUNDLE_ID)
    token: str = httpx.post(capped.url + "/appstore", content=jws).json()["token"]
    return token


@pytest.fixture(scope="module")
def nginx(
    tmp_path_factory: pytest.TempPathFactory, running_stack: Stack
) -> Iterator[NginxProcess]:
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed")
    proxy = NginxProcess(
        binary, tmp_path_factory.mktemp("nginx"), [running_stack.gateway.port]
    )
    # The shipped proxy rules with only the two client timeouts shortened.
    rules = PROXY_CONF.read_text()
    rules = re.sub(
        r"client_header_timeout \d+s", f"client_header_timeout {NGINX_TIMEOUT}s", rules
    )
    rules = re.sub(
        r"client_body_timeout \d+s", f"client_body_timeout {NGINX_TIMEOUT}s", rules
    )
    shortened = proxy.prefix / "subgate-proxy-short.conf"
    shortened.write_text(rules)
    proxy.conf.write_text(
        proxy.conf.read_text().replace(str(PROXY_CONF), str(shortened))
    )
    proxy.start()
    yield proxy
    proxy.stop()


def chat_body(size: int) -> bytes:
    head = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_at_the_cap_passes(
    capped: OwnStack, capped_token: str, openai_upstream: object
) -> None:
    answer = httpx.post(
        capped.url + "/v1/chat/completions",
        content=chat_body(BODY_CAP),
        headers={"Authorization": f"Bearer {capped_token}",
                 "Content-Type": "application/json"},
    )  # fmt: skip

    assert answer.status_code == 200


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_cap_answers_413(
    capped: OwnStack, capped_token: str, chunked: bool
) -> None:
    body = chat_body(BODY_CAP + 1)
    headers = {"Authorization": f"Bearer {capped_token}",
               "Content-Type": "application/json"}  # fmt: skip
    content = iter([body[:100], body[100:]]) if chunked else body

    answer = httpx.post(
        capped.url + "/v1/chat/completions", content=content, headers=headers
    )

    assert answer.status_code == 413
    assert_error_shape(413, answer.content)


def test_declared_length_over_the_cap_is_refused_before_the_body(
    capped: OwnStack, capped_token: str
) -> None:
    head = http_request(
        "POST",
        "/v1/chat/completions",
        {"Authorization": f"Bearer {capped_token}"},
    ).replace(b"Content-Length: 0", f"Content-Length: {100 << 20}".encode())

    answer = raw_request(capped.gateway.port, head, timeout=10)

    assert answer.status == 413


def test_login_body_over_the_cap_answers_413(capped: OwnStack) -> None:
    answer = httpx.post(capped.url + "/appstore", content=b"e" * (BODY_CAP + 1))

    assert answer.status_code == 413
    assert_error_shape(413, answer.content)


def test_header_injection_is_refused_by_the_parser(stack: Stack) -> None:
    token = stack.login()
    data = http_request(
        "GET", "/v1/models", {"Authorization": f"Bearer {token}"}
    ).replace(b"Connection: close", b"X-A: a\nX-Injected: b\r\n\x00Evil: c")

    answer = raw_request(stack.gateway.port, data)

    assert answer.status in (0, 400)
    assert stack.openai.requests == []


def test_nginx_refuses_oversized_headers(stack: Stack, nginx: NginxProcess) -> None:
    token = stack.login()
    data = http_request(
        "GET",
        "/v1/models/gpt-4o",
        {"Authorization": f"Bearer {token}", "X-Big": "a" * 65536},
    )

    answer = raw_request(nginx.port, data)

    assert answer.status in (400, 431, 494)
    assert stack.openai.requests == []


def test_nginx_passes_ordinary_requests(stack: Stack, nginx: NginxProcess) -> None:
    token = stack.login()

    answer = httpx.get(
        nginx.url + "/v1/models/gpt-4o", headers={"Authorization": f"Bearer {token}"}
    )

    assert answer.status_code == 200


def test_nginx_drops_a_client_that_sends_headers_slowly(nginx: NginxProcess) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=1) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        closed = _trickle_until_closed(sock, b"X-Slow: a\r\n", NGINX_TIMEOUT * 5)

    assert closed, "nginx kept a slow client"
    assert time.monotonic() - started < NGINX_TIMEOUT * 5


def test_nginx_drops_a_client_that_sends_the_body_slowly(
    stack: Stack, nginx: NginxProcess
) -> None:
    head = http_request("POST", "/appstore").replace(
        b"Content-Length: 0", b"Content-Length: 1000"
    )
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=1) as sock:
        sock.sendall(head + b"x" * 10)
        closed = _wait_closed(sock, NGINX_TIMEOUT * 5)

    assert closed, "nginx kept a slow upload"
    assert all(r.path != "/appstore" for r in stack.openai.requests)


@pytest.mark.parametrize("path", ["/appstore", "/v1/chat/completions"])
def test_gateway_answers_408_to_a_body_that_stops_arriving(
    capped: OwnStack, capped_token: str, path: str
) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {capped_token}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", capped.gateway.port)) as sock:
        sock.settimeout(BODY_TIMEOUT * 10)
        sock.sendall(head + b'{"model":')
        answer = _read_answer(sock)

    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in answer


def test_gateway_keeps_serving_while_slow_clients_hang_on(stack: Stack) -> None:
    with ExitStack() as hold:
        for _ in range(200):
            sock = hold.enter_context(
                socket.create_connection(("127.0.0.1", stack.gateway.port))
            )
            sock.sendall(b"POST /appstore HTTP/1.1\r\nHost: x\r\nContent-Le")

        answer = httpx.get(stack.url + "/healthz", timeout=5)

    assert answer.status_code == 200


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes or ends a chunked body."""
    answer = b""
    while not answer.endswith(b"0\r\n\r\n"):
        piece = sock.recv(65536)
        if not piece:
            break
        answer += piece
    return answer


def _trickle_until_closed(sock: socket.socket, piece: bytes, limit: float) -> bool:
    """Send `piece` every half second until the peer closes; False after `limit`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            sock.sendall(piece)
        except OSError:
            return True
        if _wait_closed(sock, 0.5):
            return True
    return False


def _wait_closed(sock: socket.socket, seconds: float) -> bool:
    """True when the peer closes (or answers and closes) within `seconds`."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True
