"""The `/v1/...` endpoint: who calls, may they, how many times, and where it goes."""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway_service.callers import Caller, CallerAuthenticator
from gateway_service.cost import USAGE_PATH, CostControl, Ticket, budget_headers
from gateway_service.forwarding import Forwarder, Outbound
from gateway_service.models import ModelCatalog
from gateway_service.relay import until_disconnect
from gateway_service.routing import PathRules, route_label
from shared import metrics
from shared.asgi import (
    JSON_HEADERS,
    Receive,
    RequestInfo,
    Scope,
    Send,
    header,
    read_body,
    request_info,
    send_answer,
)
from shared.errors import (
    EndpointNotAllowed,
    InvalidRequest,
    ProviderUnavailable,
    RequestTooLarge,
    UpstreamUnreachable,
)
from shared.limits import Decision, RateLimiter, decision_error
from shared.settings import Settings

logger = logging.getLogger(__name__)


class ApiHandler:
    """Serves every `/v1/...` request."""

    def __init__(
        self,
        settings: Settings,
        authenticator: CallerAuthenticator,
        limiter: RateLimiter,
        forwarder: Forwarder,
        catalog: ModelCatalog,
        cost: CostControl,
    ) -> None:
        self._rules = PathRules(settings.allowed_paths)
        self._authenticator = authenticator
        self._limiter = limiter
        self._forwarder = forwarder
        self._catalog = catalog
        self._cost = cost
        self._max_body = settings.max_body_bytes
        self._idle = settings.client_body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        info = request_info(scope)
        method, path = scope["method"], scope["path"]
        native = path == "/v1/messages" or path.startswith("/v1/messages/")
        info.route = route_label(path)
        if native:
            info.shape = "anthropic"

        caller = self._authenticator.authenticate(scope, accept_api_key_header=native)
        info.user = caller.user_id
        if not self._rules.allows(method, path, scope.get("raw_path") or b""):
            raise EndpointNotAllowed()
        self._check_declared_length(scope)
        if method == "GET" and path == USAGE_PATH:
            await self._cost.answer_usage(caller, send)  # not counted by the limiter
            return

        if self._cost.reserves_first(method, path, caller):
            # The reservation needs the body (model, max_tokens), so it is read first
            # and the budget checked in the limiter's one script.
            body = await read_body(receive, self._max_body, self._idle)
            payload = _json_body(scope, body)
            ticket = self._cost.prepare(caller, method, path, payload, body)
            decision = await self._admit(caller, ticket)
        else:
            decision = await self._admit(caller, None)
            local = method == "GET" and caller.own_key is None
            headers = _limit_headers(decision)
            if local and await self._answer_models(path, send, headers):
                return
            body = await read_body(receive, self._max_body, self._idle)
            payload = _json_body(scope, body)
            ticket = self._cost.prepare(caller, method, path, payload, body)

        try:
            await self._forward(
                scope, receive, send, caller, decision, ticket, (body, payload)
            )
        finally:
            if ticket is not None:
                await self._cost.settle(caller, ticket, decision)
                _log_tokens(info, ticket)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        caller: Caller,
        decision: Decision,
        ticket: Ticket | None,
        request: tuple[bytes, dict[str, Any] | None],
    ) -> None:
        info = request_info(scope)
        headers = _limit_headers(decision) + budget_headers(decision)
        try:
            outbound = self._forwarder.plan(scope, request[0], caller, request[1])
            info.provider, info.model = outbound.provider, outbound.model
            if ticket is not None:
                _attach_meter(outbound, ticket)
            await until_disconnect(
                self._forwarder.deliver(outbound, send, headers, info), receive
            )
        except (UpstreamUnreachable, ProviderUnavailable):
            # Not delivered, or refused because of the operator's setup: the user
            # is not charged a request for it.
            await self._limiter.give_back(caller.user_id, decision)
            raise

    async def _admit(self, caller: Caller, ticket: Ticket | None) -> Decision:
        decision = await self._limiter.check(
            caller.user_id,
            limits=caller.limits,
            otid=caller.original_transaction_id,
            reservation=ticket.reservation if ticket else None,
        )
        metrics.labelled(metrics.LIMITER_DECISIONS, decision.reason).inc()
        error = decision_error(decision)
        if error is not None:
            raise error
        return decision

    async def _answer_models(
        self, path: str, send: Send, headers: list[tuple[bytes, bytes]]
    ) -> bool:
        """Answer model listings here when they involve routed providers."""
        if path == "/v1/models":
            await self._catalog.send_list(send, headers)
            return True
        if path.startswith("/v1/models/"):
            model = self._catalog.routed_model(path[len("/v1/models/") :])
            if model is not None:
                await send_answer(
                    send, 200, orjson.dumps(model), JSON_HEADERS + headers
                )
                return True
        return False

    def _check_declared_length(self, scope: Scope) -> None:
        declared = header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self._max_body:
            raise RequestTooLarge()


def _json_body(scope: Scope, body: bytes) -> dict[str, Any] | None:
    """The parsed body of a request: None for multipart uploads and empty bodies;
    anything else must be a JSON object, whatever its Content-Type says, so no body
    reaches a provider without the caps, budgets and user hash applied to it."""
    content_type = header(scope, b"content-type") or ""
    media_type = content_type.partition(";")[0].strip().lower()
    if not body or media_type == "multipart/form-data":
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("The request body is not valid JSON.") from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return parsed


def _attach_meter(outbound: Outbound, ticket: Ticket) -> None:
    """Read usage from the answer in the shape its provider sends it."""
    anthropic = outbound.mode == "translated" or outbound.shape == "anthropic"
    outbound.meter = ticket.new_meter("anthropic" if anthropic else "openai")


def _log_tokens(info: RequestInfo, ticket: Ticket) -> None:
    meter = ticket.meter
    if meter is not None and meter.started and not info.tokens:
        info.tokens = dict(zip(("prompt", "completion"), meter.tokens(), strict=True))


def _limit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    headers = []
    if decision.remaining_minute is not None:
        value = str(decision.remaining_minute).encode()
        headers.append((b"x-ratelimit-remaining-minute", value))
    if decision.remaining_hour is not None:
        value = str(decision.remaining_hour).encode()
        headers.append((b"x-ratelimit-remaining-hour", value))
    return headers


__all__ = ["ApiHandler", "Outbound"]
