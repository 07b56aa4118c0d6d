"""The one upstream session every user's calls share keeps no provider state."""

from __future__ import annotations

from gateway_service.upstream import UpstreamClient
from shared.settings import load_settings
from tests.support.fake_openai import FakeOpenAI, completion
from tests.support.fake_upstream import Answer


async def test_provider_cookies_are_not_sent_back_on_later_calls(
    openai_upstream: FakeOpenAI,
) -> None:
    openai_upstream.reset()
    # A host name, not an address: a default cookie jar would keep this cookie.
    base = openai_upstream.base_url.replace("127.0.0.1", "localhost")
    cookie = "__cf_bm=provider-cookie; Path=/; HttpOnly"
    openai_upstream.queue(Answer(body=completion(), headers={"set-cookie": cookie}))
    upstream = UpstreamClient(load_settings({"JWT_SECRET": "s" * 40}, env_file=None))
    await upstream.start()
    try:
        for _ in range(2):
            response = await upstream.request(
                "openai", "POST", base + "/v1/chat/completions", {}, b"{}"
            )
            await response.read()
            response.release()
    finally:
        await upstream.close()

    first, second = openai_upstream.requests[-2:]
    assert "cookie" not in first.headers and "cookie" not in second.headers
