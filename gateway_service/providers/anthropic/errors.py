"""Anthropic's HTTP errors -> the OpenAI-shaped errors a client sees."""

from __future__ import annotations

import logging

import orjson

from shared.errors import ProviderUnavailable, SubgateError

logger = logging.getLogger(__name__)


class ProviderError(SubgateError):
    """An error answered by the provider, rewritten into OpenAI's shape."""

    def __init__(
        self,
        status: int,
        type_: str,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.status = status
        self.type = type_
        self.code = code


def translate_error(
    status: int, body: bytes, retry_after: str | None, *, provider: str = "anthropic"
) -> SubgateError:
    """Anthropic's HTTP error as the SubgateError to answer the client with.

    401/403 (and 402 billing) mean the server's key was refused: 503
    provider_unavailable. Otherwise the status is kept (529 becomes 503), the
    Anthropic error type becomes `code`, and Retry-After is kept.
    """
    if status in (401, 402, 403):
        logger.error("Provider %s refused the server's key (HTTP %d)", provider, status)
        return ProviderUnavailable(
            f"The provider {provider} is not available: it refused the server's key."
        )
    anthropic_type, message = _parse_error(body, status)
    headers = {"Retry-After": retry_after} if retry_after else {}
    mapped = 503 if status == 529 else status
    if not 400 <= mapped <= 599:
        mapped = 502
    return ProviderError(
        mapped,
        openai_error_type(anthropic_type, mapped),
        anthropic_type,
        message,
        headers,
    )


def _parse_error(body: bytes, status: int) -> tuple[str, str]:
    fallback_type = "invalid_request_error" if status < 500 else "api_error"
    if status == 529:
        fallback_type = "overloaded_error"
    fallback = (fallback_type, f"The provider answered with HTTP {status}.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return fallback
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return fallback
    anthropic_type = error.get("type")
    message = error.get("message")
    return (
        anthropic_type if isinstance(anthropic_type, str) else fallback[0],
        message if isinstance(message, str) and message else fallback[1],
    )


def openai_error_type(anthropic_type: str, status: int | None = None) -> str:
    if anthropic_type == "rate_limit_error" or status == 429:
        return "rate_limit_error"
    if anthropic_type in ("api_error", "overloaded_error", "timeout_error"):
        return "server_error"
    if status is not None and status >= 500:
        return "server_error"
    return "invalid_request_error"
