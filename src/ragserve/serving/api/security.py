"""API keys and per-client rate limiting."""

from __future__ import annotations

import hmac
import math
import threading
import time

from fastapi import Request

from ragserve.errors import RagServeError

__all__ = ["AuthError", "ForbiddenError", "RateLimitedError", "RateLimiter", "check_key"]


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
    """Token bucket per client address: ``per_minute`` requests, refilling continuously."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        if self.capacity <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                raise RateLimitedError(max(1, math.ceil((1.0 - tokens) / self.rate)))
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget idle clients; bounded memory
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 120}
