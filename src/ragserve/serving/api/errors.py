"""Every error the API returns, and the one place they become JSON.

A route raises a typed :class:`~ragserve.errors.RagServeError`; the handlers installed here turn
it (or a request validation failure, or an unexpected exception) into the ``ErrorBody`` shape
``{"error", "message", "hint"?}``. Nothing else in ``ragserve.serving.api`` builds an error response.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ragserve.errors import RagServeError, StoreError
from ragserve.serving.api.logs import request_id_var
from ragserve.serving.api.schemas import ErrorBody

__all__ = [
    "ERROR_RESPONSES",
    "NotReadyError",
    "PayloadTooLargeError",
    "StorageError",
    "StoreUnreachableError",
    "error_response",
    "install_error_handlers",
    "is_disk_full",
    "storage_error",
]

log = logging.getLogger("ragserve.serving.api")

# Documented on every operation, so the OpenAPI schema (and its clients) know the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 413, 415, 422, 429, 503, 504)
}


class NotReadyError(RagServeError):
    """Models are still loading (or the app is shutting down): a client should retry."""

    status_code = 503
    code = "not_ready"
    retry_after = 5

    def __init__(self) -> None:
        super().__init__("Models are still loading.", hint="Retry soon.")


class StoreUnreachableError(RagServeError):
    status_code = 503
    code = "store_unreachable"


class PayloadTooLargeError(RagServeError):
    status_code = 413
    code = "payload_too_large"

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"The request body is {length} bytes; the limit is {limit}.",
            hint="Send a smaller request.",
        )


class StorageError(RagServeError):
    status_code = 507
    code = "insufficient_storage"


def storage_error(exc: OSError | StoreError, directory: Path) -> RagServeError:
    """Disk full or read-only while storing an upload: say which, keep the service up.

    A full disk is 507 wherever it struck: staging the upload (an ``OSError``) or the index's
    own write (a ``StoreError`` caused by one), so a client sees one typed answer for it.
    """
    if is_disk_full(exc):
        return StorageError(
            f"The disk holding the index ({directory}) is full; the upload was not stored.",
            hint="Free disk space and upload again; nothing already indexed was changed.",
        )
    if isinstance(exc, StoreError):
        return exc  # the store's own typed error already says what failed
    if exc.errno in (errno.EACCES, errno.EROFS):
        err = StorageError(
            f"The index directory {directory} is read-only; the upload was not stored.",
            hint="Make it writable and upload again; the index still answers questions.",
        )
        # Read-only is an operator's state, not a shortage: "unavailable", as for a store.
        err.status_code = 503
        return err
    return StorageError(
        f"Storing the upload failed: {exc.strerror}.",
        hint="Check the server's disk; nothing already indexed was changed.",
    )


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain (SQLite reports it only in words)."""
    while exc is not None:
        if getattr(exc, "errno", None) == errno.ENOSPC:
            return True
        text = str(exc).lower()
        if "disk is full" in text or "no space left" in text:
            return True
        exc = exc.__cause__
    return False


def error_response(exc: RagServeError) -> JSONResponse:
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


class _InternalError(RagServeError):
    status_code = 500
    code = "internal_error"


async def _typed_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RagServeError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in exc.errors()
    ]
    return JSONResponse(
        {
            "error": "invalid_request",
            "message": "; ".join(problems)[:2000],
            "hint": "See the request schema at /docs.",
        },
        status_code=422,
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(
        _InternalError(
            f"Internal server error (request {request_id_var.get()}).",
            hint="Retry; if it persists, report the request id.",
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RagServeError, _typed_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
