"""Per-request bookkeeping: request id, body-size limit, metrics and the access log."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response

from ragserve.serving.api.errors import PayloadTooLargeError, error_response
from ragserve.serving.api.logs import request_id_var
from ragserve.serving.api.state import AppState

__all__ = ["observe_requests"]

log = logging.getLogger("ragserve.serving.api")

CallNext = Callable[[Request], Awaitable[Response]]
_SAFE_REQUEST_ID = re.compile(r"[\w.-]{1,64}")


def _request_id(request: Request) -> str:
    # A caller's id is echoed into logs and headers, so only a short, plain one is kept.
    rid = request.headers.get("x-request-id") or ""
    return rid if _SAFE_REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex[:16]


def _too_large(request: Request, state: AppState) -> PayloadTooLargeError | None:
    """Refused from the declared length, before a byte of the body is read."""
    settings = state.settings
    is_upload = request.url.path.startswith("/documents")
    limit = settings.api.max_upload_bytes if is_upload else settings.api.max_body_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        return PayloadTooLargeError(int(length), limit)
    return None


def observe_requests(state: AppState) -> Callable[[Request, CallNext], Awaitable[Response]]:
    async def observe(request: Request, call_next: CallNext) -> Response:
        rid = _request_id(request)
        token = request_id_var.set(rid)
        started = time.perf_counter()
        try:
            refused = _too_large(request, state)
            response = error_response(refused) if refused else await call_next(request)
        finally:
            request_id_var.reset(token)
        elapsed = time.perf_counter() - started
        path = getattr(request.scope.get("route"), "path", "unmatched")
        state.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        state.metrics.latency.labels(path, request.method).observe(elapsed)
        response.headers["x-request-id"] = rid
        request_id_var.set(rid)
        log.info(
            "%s %s %d",
            request.method,
            path,
            response.status_code,
            extra={"route": path, "status": response.status_code, "ms": round(elapsed * 1000, 1)},
        )
        request_id_var.set(None)
        return response

    return observe
