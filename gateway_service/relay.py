"""Relaying a provider's answer to the client as it arrives, and noticing when the
client goes away so the provider call is cancelled at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from shared import metrics
from shared.asgi import ClientDisconnected, Receive, Send

logger = logging.getLogger(__name__)

T = TypeVar("T")
Transform = Callable[[bytes], bytes]
TRANSFORM_SLICE_BYTES = 4096


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Run `work` to its end, or cancel it as soon as the client disconnects.

    The work runs in the caller's task; one watcher task waits for the disconnect and
    cancels the caller. Call only after the request body was read, so `receive` has
    nothing else to say.
    """
    caller = asyncio.current_task()
    assert caller is not None, "until_disconnect() runs inside a task"
    state = {"running": True, "gone": False}

    def client_left(watcher: asyncio.Future[None]) -> None:
        # Runs from the event loop; the work may have finished in the meantime, and
        # then the watcher was cancelled here, not by receive().
        if state["running"]:
            if not watcher.cancelled():
                watcher.exception()  # a failing receive() also means the client left
            state["gone"] = True
            caller.cancel()

    watcher = asyncio.ensure_future(_disconnected(receive))
    watcher.add_done_callback(client_left)
    try:
        result = await work
    except asyncio.CancelledError:
        if state["gone"] and caller.uncancel() == 0:
            raise ClientDisconnected() from None
        raise  # cancelled from elsewhere too (server shutdown): pass it on
    except Exception:
        if not state["gone"]:
            raise
        # The work turned the cancellation into another error; the client is gone.
        caller.uncancel()
        raise ClientDisconnected() from None
    finally:
        state["running"] = False
        watcher.cancel()
    if state["gone"]:  # the work swallowed the cancellation and finished anyway
        caller.uncancel()
    return result


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


async def relay_body(
    response: aiohttp.ClientResponse,
    send: Send,
    *,
    transform: Transform | None = None,
    finish: Callable[[], bytes] | None = None,
    broken: Callable[[], bytes] | None = None,
) -> None:
    """Send the provider's body chunk by chunk (after the client got the headers).

    `transform` rewrites each chunk (translation), `finish` adds a tail at the end, and
    `broken` gives the bytes that tell the client the stream failed midway; without
    it a failure mid-body aborts the connection so the client cannot mistake a
    truncated answer for a whole one.
    """
    streaming = is_event_stream(response)
    if streaming:
        metrics.ACTIVE_STREAMS.inc()
    try:
        await _pump(response, send, transform, sliced=streaming)
    except (TimeoutError, aiohttp.ClientError) as exc:
        metrics.UPSTREAM_ERRORS.labels("relay", "broken_stream").inc()
        logger.warning("Upstream answer broke off midway: %s", type(exc).__name__)
        if broken is None:
            raise ClientDisconnected() from exc
        await send({"type": "http.response.body", "body": broken()})
        return
    finally:
        if streaming:
            metrics.ACTIVE_STREAMS.dec()
        response.release()
    tail = finish() if finish else b""
    await send({"type": "http.response.body", "body": tail})


async def _pump(
    response: aiohttp.ClientResponse,
    send: Send,
    transform: Transform | None,
    *,
    sliced: bool,
) -> None:
    reader = response.content
    # A stream's first event leaves on its own: when a burst of events came in one
    # read, taking all of them at once first joins every HTTP chunk of the burst
    # (about 1 µs each in aiohttp), and the first event would wait for that.
    # (A client reads a JSON answer only once it is whole: it keeps its big writes.)
    step = TRANSFORM_SLICE_BYTES if sliced else 0
    if sliced:
        first, _ = await reader.readchunk()
        await _send_body(first, send, transform, step)
    async for chunk in reader.iter_any():
        await _send_body(chunk, send, transform, step)


async def _send_body(
    chunk: bytes, send: Send, transform: Transform | None, step: int
) -> None:
    """Send one read of the provider's body, rewritten by `transform` if given, and a
    slice of `step` bytes at a time (0: whole), so that the first events of a burst
    leave before the last ones are rewritten."""
    if transform is None:
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        return
    step = step or max(len(chunk), 1)
    for start in range(0, len(chunk), step):
        out = transform(chunk[start : start + step])
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
