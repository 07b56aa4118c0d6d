"""Cost control at the gateway: the model allowlist, answer-length ceilings, token
budgets (reserve before forwarding, settle after the answer) and `GET /v1/usage`.

Caps and budgets protect the operator's bill, so they apply to callers on the server's
keys; key pass-through callers pay their own provider and are only accounted.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson

from gateway_service.callers import Caller
from gateway_service.metering import Meter, UsageShape
from gateway_service.providers.config import ProviderRegistry
from shared.asgi import JSON_HEADERS, Send, send_answer
from shared.errors import InvalidRequest, MaxTokensTooLarge, ModelNotAllowed
from shared.limits import Decision
from shared.settings import Settings
from shared.usage import (
    NO_BUDGET,
    Budget,
    Reservation,
    SettlementBatcher,
    UsageLedger,
)

logger = logging.getLogger(__name__)

# Paths whose answers carry token usage.
METERED_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
# The parameters that bound an answer's length, by path (first present wins).
_OUTPUT_PARAMS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
    "/v1/messages": ("max_tokens",),
}
USAGE_PATH = "/v1/usage"
# Bytes of request per estimated input token, for answers without usage.
BYTES_PER_TOKEN = 4


@dataclass
class Ticket:
    """One metered request's bookkeeping, from admission to settlement."""

    path: str
    max_tokens: int
    body_bytes: int
    reservation: Reservation | None = None
    meter: Meter | None = None

    def new_meter(self, shape: UsageShape) -> Meter:
        self.meter = Meter(
            shape,
            input_estimate=math.ceil(self.body_bytes / BYTES_PER_TOKEN),
            output_fallback=self.max_tokens,
        )
        return self.meter


class CostControl:
    """Applies caps, plans reservations and settles each metered request."""

    def __init__(
        self, settings: Settings, registry: ProviderRegistry, ledger: UsageLedger
    ) -> None:
        self.accounting = settings.token_accounting
        self._global = Budget(
            settings.daily_token_budget, settings.monthly_token_budget
        )
        self._products = {
            product: Budget(
                self._global.daily if daily is None else daily,
                self._global.monthly if monthly is None else monthly,
            )
            for product, daily, monthly in settings.product_token_budgets
        }
        self._allowlist = settings.model_allowlist
        self._ceiling = settings.max_tokens_ceiling
        self._refuse = settings.max_tokens_policy == "refuse"
        self._registry = registry
        self._ledger = ledger
        self._batcher = SettlementBatcher(ledger)
        self._pending: set[asyncio.Task[None]] = set()
        if not self.accounting and (self._global.enabled or self._products):
            logger.warning("Token budgets are off: TOKEN_ACCOUNTING=0")

    def budget(self, caller: Caller) -> Budget:
        """The budget of this caller: its product's, else the global one."""
        if not self.accounting or caller.own_key is not None:
            return NO_BUDGET
        if caller.product_id is not None and caller.product_id in self._products:
            return self._products[caller.product_id]
        return self._global

    def reserves_first(self, method: str, path: str, caller: Caller) -> bool:
        """Whether this request is admitted with a reservation (body read first)."""
        return (
            method == "POST" and path in METERED_PATHS and self.budget(caller).enabled
        )

    # -- before forwarding ------------------------------------------------------------

    def prepare(
        self,
        caller: Caller,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        body: bytes,
    ) -> Ticket | None:
        """Apply the caps to the JSON body (in place); a Ticket for metered paths."""
        if method != "POST":
            return None
        max_tokens = 0
        if payload is not None and caller.own_key is None:
            self._check_model(payload)
            # Each of `n` choices may be as long as the capped answer length.
            max_tokens = self._cap_output(path, payload) * _choices(payload)
        if not self.accounting or path not in METERED_PATHS:
            return None
        ticket = Ticket(path, max_tokens, len(body))
        budget = self.budget(caller)
        if budget.enabled:
            ticket.reservation = Reservation.new(max_tokens + len(body), budget)
        return ticket

    def _check_model(self, payload: dict[str, Any]) -> None:
        model = payload.get("model")
        if not self._allowlist or not isinstance(model, str):
            return
        if not any(fnmatch.fnmatchcase(model, glob) for glob in self._allowlist):
            raise ModelNotAllowed(
                f"The model {model!r} is not available through this gateway.",
                param="model",
            )

    def _cap_output(self, path: str, payload: dict[str, Any]) -> int:
        """Clamp or refuse answer lengths over the ceiling; the length to reserve."""
        params = _OUTPUT_PARAMS.get(path)
        if not params:
            return 0
        model = payload.get("model")
        config = self._registry.model_config(model if isinstance(model, str) else "")
        ceiling = _smallest(config.max_tokens_limit, self._ceiling)
        present = [name for name in params if payload.get(name) is not None]
        for name in present:
            value = payload[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRequest(f"{name} must be a positive integer.", param=name)
            if ceiling is not None and value > ceiling:
                if self._refuse:
                    raise MaxTokensTooLarge(
                        f"{name} is {value}; this model allows at most {ceiling}.",
                        param=name,
                    )
                payload[name] = ceiling
        if present:
            return int(payload[present[0]])
        return self._default_output(path, payload, config.max_tokens, ceiling)

    def _default_output(
        self, path: str, payload: dict[str, Any], default: int, ceiling: int | None
    ) -> int:
        """The length of an answer that names none: the ceiling, sent upstream, or
        the model's default (what the Claude translation sends) as an estimate."""
        model = payload.get("model")
        routed = self._registry.route(model) if isinstance(model, str) else None
        translated = path == "/v1/chat/completions" and (
            routed is not None and routed[0].kind == "anthropic"
        )
        if ceiling is None or path == "/v1/messages":
            return default if ceiling is None else min(default, ceiling)
        if translated:
            ceiling = min(default, ceiling)
        name = _OUTPUT_PARAMS[path][0]
        if path == "/v1/chat/completions" and routed is not None and not translated:
            name = "max_tokens"  # OpenAI-compatible providers know the older name
        payload[name] = ceiling
        return ceiling

    # -- after the answer ------------------------------------------------------------

    async def settle(self, caller: Caller, ticket: Ticket, decision: Decision) -> None:
        """Charge what the answer used, or release the hold when nothing was served.

        Without a hold the charge joins the next batch at once; with one, the write
        runs in its own task, so a request cancelled meanwhile still settles.
        """
        meter, hold = ticket.meter, decision.hold
        tokens = meter.tokens() if meter is not None and meter.started else None
        if hold is None:
            if tokens is not None:
                self._batcher.add(caller.user_id, *tokens)
            return
        task = asyncio.ensure_future(self._settle_hold(caller.user_id, hold, tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    async def _settle_hold(
        self, user: str, hold: str, tokens: tuple[int, int] | None
    ) -> None:
        if tokens is None:
            await self._ledger.release(user, hold)
        else:
            await self._ledger.settle(user, hold, *tokens)

    async def close(self) -> None:
        """Write the charges still waiting (at shutdown)."""
        await self._batcher.close()

    async def release(self, caller: Caller, decision: Decision) -> None:
        """Drop a reservation of a request that never reached a provider."""
        await self._ledger.release(caller.user_id, decision.hold)

    # -- GET /v1/usage ---------------------------------------------------------------

    async def answer_usage(self, caller: Caller, send: Send) -> None:
        await self._batcher.flush(caller.user_id)
        report = await self._ledger.report(caller.user_id)
        body = report.as_json(self.budget(caller))
        body["product_id"] = caller.product_id
        await send_answer(send, 200, orjson.dumps(body), JSON_HEADERS)


def _choices(payload: dict[str, Any]) -> int:
    """How many answers one request asks for (`n`, or `best_of` on completions)."""
    counts = [payload.get("n"), payload.get("best_of")]
    valid = [c for c in counts if isinstance(c, int) and not isinstance(c, bool)]
    return max([1, *valid])


def _smallest(*limits: int | None) -> int | None:
    positive = [limit for limit in limits if limit]
    return min(positive) if positive else None


def budget_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """`x-ratelimit-remaining-tokens-day/-month` after this request's reservation."""
    headers = []
    if decision.remaining_day is not None:
        value = str(decision.remaining_day).encode()
        headers.append((b"x-ratelimit-remaining-tokens-day", value))
    if decision.remaining_month is not None:
        value = str(decision.remaining_month).encode()
        headers.append((b"x-ratelimit-remaining-tokens-month", value))
    return headers
