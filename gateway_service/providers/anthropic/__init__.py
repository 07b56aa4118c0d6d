"""OpenAI Chat Completions <-> Anthropic Messages translation, as pure functions.

The gateway calls `translate_request` before posting to Anthropic's `/v1/messages`,
then `translate_response` (JSON answers), a `StreamTranslator` (SSE answers) or
`translate_error` (HTTP errors). Nothing here does I/O. The rules follow
`docs/wire/MAPPING.md`; the parameter policy is tabled in `providers/README.md`.
"""

from gateway_service.providers.anthropic.errors import ProviderError, translate_error
from gateway_service.providers.anthropic.request import (
    ANTHROPIC_VERSION,
    DROPPED_PARAMS,
    IMAGE_TYPES,
    translate_request,
    upstream_headers,
)
from gateway_service.providers.anthropic.response import (
    finish_reason,
    openai_usage,
    translate_response,
)
from gateway_service.providers.anthropic.stream import StreamTranslator

__all__ = [
    "ANTHROPIC_VERSION",
    "DROPPED_PARAMS",
    "IMAGE_TYPES",
    "ProviderError",
    "StreamTranslator",
    "finish_reason",
    "openai_usage",
    "translate_error",
    "translate_request",
    "translate_response",
    "upstream_headers",
]
