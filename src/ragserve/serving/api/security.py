"""API keys and per-client rate limiting."""

from __future__ import annotations

import hmac
import logging
import math
import time
from typing import Any

from fastapi import Request

from ragserve.errors import RagServeError

__all__ = ["AuthError", "ForbiddenError", "RateLimitedError", "RateLimiter", "check_key"]

log = logging.getLogger("ragserve.serving.api")


class AuthError(RagServeError):
    status_code = 401
    code = "unauthorized"


class ForbiddenError(RagServeError):
    status_code = 403
    code = "forbidden"


class RateLimitedError(RagServeError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many requests; retry in {retry_after} s.",
            hint="Slow down, or raise RAGSERVE_RATE_LIMIT_PER_MINUTE.",
        )
        self.retry_after = retry_after


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def check_key(request: Request, expected: str | None, what: str) -> None:
    """Constant-time comparison; the key itself never reaches a log or a response."""
    if expected is None:
        return
    presented = _presented_key(request)
    if presented is None:
        raise AuthError(
            f"This {what} route needs an API key.",
            hint="Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
        )
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise AuthError("The API key is not valid.", hint="Check the key you were given.")


class RateLimiter:
    """At most ``per_minute`` requests from one client in any 60 seconds (a moving window, from
    the ``limits`` package), then 429 with the seconds until its oldest request leaves the window.

    The counts live in ``storage``: this process's memory by default (``memory://``), or a store
    several ragserve processes share (``redis://host:6379``, the ``redis`` extra), so one limit
    holds across the replicas behind a load balancer. A ``limits`` storage object may be passed
    too. A storage that cannot be used is an error at start naming ``rate_limit_storage``; one
    that fails later lets requests through (logged), rather than refusing every client.
    """

    def __init__(self, per_minute: int, *, storage: str | Any = "memory://") -> None:
        from limits import RateLimitItemPerMinute
        from limits.strategies import MovingWindowRateLimiter

        self.per_minute = per_minute
        self._item = RateLimitItemPerMinute(max(per_minute, 1))
        self._limiter: Any = None
        self._warned = -math.inf
        if per_minute > 0:
            store = _open_storage(storage) if isinstance(storage, str) else storage
            self._limiter = MovingWindowRateLimiter(store)

    def check(self, client: str) -> None:
        if self._limiter is None:
            return
        from limits.errors import StorageError

        try:
            if self._limiter.hit(self._item, _NAMESPACE, client):
                return
            stats = self._limiter.get_window_stats(self._item, _NAMESPACE, client)
        except StorageError as exc:
            now = time.monotonic()
            if now - self._warned > 60:  # once a minute, not once a request
                self._warned = now
                log.warning("rate limit storage failed (%s); requests pass unlimited", exc)
            return
        raise RateLimitedError(max(1, math.ceil(stats.reset_time - time.time())))


_NAMESPACE = "ragserve-chat"


def _open_storage(uri: str) -> Any:
    from limits.errors import ConfigurationError
    from limits.storage import storage_from_string

    from ragserve.config import SettingsError

    hint = (
        "Set RAGSERVE_RATE_LIMIT_STORAGE (rate_limit_storage) to memory:// (this process only) "
        "or redis://host:port (shared by every process; pip install 'ragserve[redis]')."
    )
    try:
        store = storage_from_string(uri, wrap_exceptions=True)
    except ConfigurationError as exc:
        raise SettingsError(f"rate_limit_storage {uri!r} cannot be used: {exc}", hint=hint) from exc
    if not store.check():
        raise SettingsError(f"rate_limit_storage {uri!r} does not answer.", hint=hint)
    return store
