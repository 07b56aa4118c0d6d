"""The errors Subgate shows its clients, each with its HTTP status and stable code.

Code raises a `SubgateError`; one handler per service turns it into the contract's JSON,
in OpenAI's shape by default and in Anthropic's on `/v1/messages`.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

ErrorShape = Literal["openai", "anthropic"]

# Anthropic's error type names, by the OpenAI type names the contract uses.
_ANTHROPIC_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "api_error",
}


class SubgateError(Exception):
    """An error a client may see; subclasses fix the status, code and type."""

    status: int = 500
    code: str = "internal_error"
    type: str = "api_error"
    message: str = "Internal error."
    default_headers: dict[str, str] = {}

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.param = param
        self.headers = {**self.default_headers, **(headers or {})}

    def body(self, shape: ErrorShape = "openai") -> bytes:
        """The JSON body of this error in the given client library's shape."""
        return error_body(self.message, self.type, self.code, self.param, shape)


def error_body(
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    shape: ErrorShape = "openai",
) -> bytes:
    """Serialise an error the way OpenAI's or Anthropic's client libraries read it."""
    if shape == "anthropic":
        anthropic_type = _ANTHROPIC_TYPES.get(type_, type_)
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": anthropic_type, "message": message, "code": code},
        }
    else:
        payload = {
            "error": {"message": message, "type": type_, "code": code, "param": param}
        }
    return orjson.dumps(payload)


class InvalidRequest(SubgateError):
    """The request body or its parameters cannot be used."""

    status, code, type = 400, "invalid_request", "invalid_request_error"
    message = "The request is not valid."


class UnsupportedParameter(SubgateError):
    """A parameter the chosen provider cannot honour."""

    status, code, type = 400, "unsupported_parameter", "invalid_request_error"
    message = "This parameter is not supported for this model."


class SubscriptionRequired(SubgateError):
    """No valid purchase backs this request: the app should show its paywall."""

    status, code, type = 401, "subscription_required", "authentication_error"
    message = "No valid subscription."


class Banned(SubgateError):
    """The user is permanently banned until an operator lifts the ban."""

    status, code, type = 403, "banned", "permission_error"
    message = "This account is banned."
    default_headers = {"x-should-retry": "false"}


class EndpointNotAllowed(SubgateError):
    """The method and path are outside ALLOWED_PATHS."""

    status, code, type = 403, "endpoint_not_allowed", "permission_error"
    message = "This endpoint is not available through this gateway."


class NotFound(SubgateError):
    """No such route."""

    status, code, type = 404, "not_found", "invalid_request_error"
    message = "Not found."


class SessionExpired(SubgateError):
    """The session token is missing, malformed, forged or expired: log in again."""

    status, code, type = 407, "session_expired", "authentication_error"
    message = "The session token is missing or no longer valid; log in again."

    default_headers = {"Proxy-Authenticate": 'Bearer realm="subgate"'}


class RequestTimeout(SubgateError):
    """The client stopped sending its request body."""

    status, code, type = 408, "request_timeout", "invalid_request_error"
    message = "The request body stopped arriving; send it again."


class RequestTooLarge(SubgateError):
    """The body is over MAX_BODY_BYTES."""

    status, code, type = 413, "request_too_large", "invalid_request_error"
    message = "The request body is too large."


class RateLimited(SubgateError):
    """Over a limit or blocked."""

    status, code, type = 429, "rate_limited", "rate_limit_error"
    message = "Too many requests; try again later."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        retry = {"Retry-After": str(max(1, retry_after)), "x-should-retry": "false"}
        super().__init__(message, headers=retry)
        self.retry_after = retry_after


class LoginRateLimited(RateLimited):
    """Too many /appstore attempts from one client address."""

    code = "login_rate_limited"
    message = "Too many login attempts; try again later."


class QuotaExceeded(RateLimited):
    """The user's daily or monthly token budget is spent; Retry-After until reset."""

    code = "quota_exceeded"
    message = "The token budget for this period is used up; try again after it resets."


class ModelNotAllowed(SubgateError):
    """The model is outside MODEL_ALLOWLIST."""

    status, code, type = 403, "model_not_allowed", "permission_error"
    message = "This model is not available through this gateway."
    default_headers = {"x-should-retry": "false"}


class MaxTokensTooLarge(SubgateError):
    """The answer length asked for is over the model's ceiling (policy `refuse`)."""

    status, code, type = 400, "max_tokens_too_large", "invalid_request_error"
    message = "The requested answer length is over this model's limit."


class UpstreamUnreachable(SubgateError):
    """The provider could not be reached."""

    status, code, type = 502, "upstream_unreachable", "api_error"
    message = "The provider could not be reached."


class ProviderUnavailable(SubgateError):
    """The provider is not configured here, or refused the server's key."""

    status, code, type = 503, "provider_unavailable", "api_error"
    message = "The provider is not available."
    # A retry cannot help until the operator fixes the key or its configuration.
    default_headers = {"x-should-retry": "false"}


class Unavailable(SubgateError):
    """A dependency (Redis, Apple, OCSP) is unreachable."""

    status, code, type = 503, "unavailable", "api_error"
    message = "The service is temporarily unavailable."


class UpstreamTimeout(SubgateError):
    """The provider did not answer in time."""

    status, code, type = 504, "upstream_timeout", "api_error"
    message = "The provider did not answer in time."
