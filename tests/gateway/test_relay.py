"""`until_disconnect`: the provider call runs in the request's task and stops the moment
the client leaves, without leaving a cancellation behind for what follows."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol

from gateway_service.relay import TRANSFORM_SLICE_BYTES, _pump, until_disconnect
from shared.asgi import ClientDisconnected


class Client:
    """An ASGI `receive` that says `http.disconnect` once `leave()` is called."""

    def __init__(self) -> None:
        self._left = asyncio.Event()

    def leave(self) -> None:
        self._left.set()

    async def receive(self) -> dict[str, Any]:
        await self._left.wait()
        return {"type": "http.disconnect"}


async def test_until_disconnect_returns_the_work_result() -> None:
    client = Client()

    async def work() -> str:
        await asyncio.sleep(0)
        return "answer"

    assert await until_disconnect(work(), client.receive) == "answer"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_until_disconnect_cancels_the_work_when_the_client_leaves() -> None:
    client = Client()
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.01, client.leave)
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(until_disconnect(work(), client.receive), 5)
    assert cancelled.is_set()


async def test_until_disconnect_leaves_no_cancellation_behind() -> None:
    client = Client()

    async def work() -> None:
        await asyncio.sleep(30)

    async def request() -> str:
        with pytest.raises(ClientDisconnected):
            await until_disconnect(work(), client.receive)
        await asyncio.sleep(0.01)  # what the handler does afterwards (settling)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        return "settled"

    asyncio.get_running_loop().call_later(0.01, client.leave)
    assert await asyncio.wait_for(request(), 5) == "settled"


async def test_until_disconnect_ignores_a_disconnect_after_the_work_ended() -> None:
    client = Client()

    async def work() -> str:
        client.leave()  # the client goes away as the answer completes:
        await asyncio.sleep(0)  # the watcher sees it before the work returns
        return "answer"

    async def request() -> str:
        answer = await until_disconnect(work(), client.receive)
        await asyncio.sleep(0.01)
        return answer

    assert await asyncio.wait_for(request(), 5) == "answer"


async def test_until_disconnect_reports_a_failing_receive_as_a_disconnect() -> None:
    async def broken_receive() -> dict[str, Any]:
        raise RuntimeError("connection lost")

    async def work() -> None:
        await asyncio.sleep(30)

    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(until_disconnect(work(), broken_receive), 5)


async def test_until_disconnect_passes_on_a_cancellation_from_elsewhere() -> None:
    client = Client()
    task = asyncio.ensure_future(until_disconnect(asyncio.sleep(30), client.receive))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_until_disconnect_reports_work_that_converts_the_cancellation() -> None:
    client = Client()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise ValueError("cancelled into another error") from None

    async def request() -> int:
        with pytest.raises(ClientDisconnected):
            await until_disconnect(work(), client.receive)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    asyncio.get_running_loop().call_later(0.01, client.leave)
    assert await asyncio.wait_for(request(), 5) == 0


async def test_until_disconnect_reports_a_cancelled_receive_as_a_disconnect() -> None:
    async def receive() -> dict[str, Any]:
        raise asyncio.CancelledError()

    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(until_disconnect(asyncio.sleep(30), receive), 5)


async def test_until_disconnect_keeps_a_shutdown_that_meets_a_disconnect() -> None:
    client = Client()
    task = asyncio.ensure_future(until_disconnect(asyncio.sleep(30), client.receive))
    await asyncio.sleep(0.01)
    client.leave()
    await asyncio.sleep(0)  # the watcher sees the disconnect and cancels the task
    await asyncio.sleep(0)
    task.cancel()  # and the server shuts down at the same moment

    with pytest.raises(asyncio.CancelledError):
        await task


class Response:
    """What `_pump` reads of an aiohttp response: its body, here a real aiohttp
    StreamReader fed as aiohttp's HTTP parser feeds it, one HTTP chunk at a time."""

    def __init__(self, http_chunks: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        self.content = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
        for data in http_chunks:
            self.content.begin_http_chunk_receiving()
            self.content.feed_data(data)
            self.content.end_http_chunk_receiving()
        self.content.feed_eof()


async def test_a_burst_is_rewritten_and_sent_a_slice_at_a_time() -> None:
    events = [b'data: {"n": %d}\n\n' % i for i in range(2000)]
    burst = b"".join(events)
    seen: list[int] = []
    sent: list[tuple[int, bytes]] = []

    def transform(data: bytes) -> bytes:
        seen.append(len(data))
        return data.upper()

    async def send(message: dict[str, Any]) -> None:
        sent.append((len(seen), message["body"]))

    await _pump(Response(events), send, transform, sliced=True)  # type: ignore[arg-type]

    # The first event left alone, before the rest of the burst was even gathered;
    # then each slice left before the next one was rewritten.
    assert sent[0] == (1, events[0].upper())
    assert sent[1][0] == 2
    assert max(seen) <= TRANSFORM_SLICE_BYTES and len(sent) > 2
    assert b"".join(body for _, body in sent) == burst.upper()

    seen.clear()
    sent.clear()
    json_answer = [b'{"a": "%d"}' % i for i in range(100)]
    await _pump(Response(json_answer), send, transform, sliced=False)  # type: ignore[arg-type]

    assert len(seen) == 1  # a JSON answer keeps its one big write
    assert [body for _, body in sent] == [b"".join(json_answer).upper()]


async def test_a_stream_without_a_transform_is_relayed_whole() -> None:
    events = [b"data: %d\n\n" % i for i in range(50)]
    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["body"])

    await _pump(Response(events), send, None, sliced=True)  # type: ignore[arg-type]

    assert sent[0] == events[0]
    assert b"".join(sent) == b"".join(events)
    assert all(sent)  # nothing empty is sent
