"""Running a service: settings checked first, logging set once, uvicorn tuned, and a
graceful drain on SIGTERM (not ready at once, in-flight requests finish, then exit).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Protocol

import uvicorn

from shared.logs import configure_logging
from shared.metrics import serve_metrics
from shared.settings import Settings, SettingsError, load_settings

logger = logging.getLogger(__name__)

# Container allocations between two collections of the youngest generation (Python's
# default is 700). Measured under load in one gateway worker: with the default and
# the start-up objects unfrozen, collections took about 85 µs of every request;
# frozen and at this threshold, about 4 µs (README "Performance").
GC_YOUNG_THRESHOLD = 10_000


class Drainable(Protocol):
    """An app that can be told to stop reporting ready."""

    draining: bool


def load_or_exit(service: str) -> Settings:
    """The settings, or a clear list of problems on stderr and exit status 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        _exit_with_problems(service, exc)


def _exit_with_problems(service: str, exc: SettingsError) -> NoReturn:
    print(f"{service}: cannot start; fix these settings:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)
    raise SystemExit(2) from None


class _DrainingServer(uvicorn.Server):
    """Marks the app as draining as soon as a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, app: Drainable) -> None:
        super().__init__(config)
        self._drainable = app

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the stop signal after serving; a drained stop is a
            # clean exit, so forget it and exit 0.
            self._captured_signals.clear()

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self._drainable.draining:
            logger.info("Stop signal received; draining in-flight requests")
        self._drainable.draining = True
        super().handle_exit(sig, frame)


def run_service(
    service: str,
    make_app: Callable[[Settings], tuple[Any, Drainable]],
    host_port: Callable[[Settings], tuple[str, int, int]],
) -> None:
    """Start one service in the foreground until SIGINT or SIGTERM."""
    settings = load_or_exit(service)
    configure_logging(service, settings.log_level, settings.log_format)
    try:
        asgi_app, drainable = make_app(settings)
    except SettingsError as exc:
        _exit_with_problems(service, exc)
    host, port, metrics_port = host_port(settings)
    serve_metrics(host, metrics_port)
    config = uvicorn.Config(
        asgi_app,
        host=host,
        port=port,
        loop="uvloop" if _installed("uvloop") else "asyncio",
        http="httptools" if _installed("httptools") else "h11",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        # Client addresses are worked out by Subgate itself, against TRUSTED_PROXIES.
        proxy_headers=False,
        date_header=False,
        backlog=4096,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )
    tune_gc()
    logger.info("%s listening on http://%s:%d", service, host, port)
    _DrainingServer(config, drainable).run()


def tune_gc() -> None:
    """Keep what start-up built (modules, settings, certificates, the app) out of every
    later collection, and collect young objects less often: a request makes and drops
    a few thousand of them, and the default threshold collected several times per
    request's worth."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
