"""Which requests may pass (ALLOWED_PATHS) and which route label they get."""

from __future__ import annotations

import re

# A path the gateway forwards: /v1/ and then plain segments, nothing a URL parser or
# the provider could read as another host, another folder or an encoded separator.
_SAFE_PATH = re.compile(r"^/v1(/[A-Za-z0-9_\-.~:]+)+/?$")
_KNOWN_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/models",
    "/v1/audio",
    "/v1/images",
    "/v1/responses",
    "/v1/messages",
)


class PathRules:
    """The `METHOD /path` allowlist; a trailing `*` matches the rest of the path."""

    def __init__(self, rules: tuple[tuple[str, str], ...]) -> None:
        self._exact = {
            (method, path) for method, path in rules if not path.endswith("*")
        }
        self._prefixes = [
            (method, path[:-1]) for method, path in rules if path.endswith("*")
        ]

    def allows(self, method: str, path: str, raw_path: bytes) -> bool:
        if not is_safe_path(path, raw_path):
            return False
        if (method, path) in self._exact:
            return True
        return any(
            method == rule_method and path.startswith(prefix)
            for rule_method, prefix in self._prefixes
        )


def is_safe_path(path: str, raw_path: bytes) -> bool:
    """No dot segments, empty segments, encoded characters or odd bytes."""
    if b"%" in raw_path or not _SAFE_PATH.match(path):
        return False
    return all(segment not in (".", "..") for segment in path.split("/"))


def route_label(path: str) -> str:
    """A low-cardinality name for metrics: the known endpoint family, else `other`."""
    for route in _KNOWN_ROUTES:
        if path == route or path.startswith(route + "/"):
            return route
    return "other"
