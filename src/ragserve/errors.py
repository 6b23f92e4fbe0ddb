"""Typed, user-facing errors.

Every error says what is wrong and what to do about it. The API maps ``status_code`` to the
HTTP response; the CLI prints the message and exits non-zero. Nothing here carries a
traceback to the user.
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "ConfigError",
    "DatasetError",
    "DocumentNotFoundError",
    "EmbedderMismatchError",
    "EmptyQueryError",
    "GenerationBusyError",
    "GenerationError",
    "GenerationTimeoutError",
    "IngestError",
    "LLMUnavailableError",
    "ModelNotFoundError",
    "RagServeError",
    "StoreError",
    "UnsupportedFileTypeError",
]


class RagServeError(Exception):
    """Base class: ``message`` says what is wrong, ``hint`` what to do."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, str]:
        body = {"error": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body


class BadRequestError(RagServeError):
    status_code = 400
    code = "bad_request"


class EmptyQueryError(BadRequestError):
    status_code = 422
    code = "empty_query"

    def __init__(self) -> None:
        super().__init__("The query is empty.", hint="Send a non-empty question.")


class ConfigError(RagServeError):
    status_code = 500
    code = "config_error"


class ModelNotFoundError(ConfigError):
    code = "model_not_found"


class IngestError(RagServeError):
    """A file could not be ingested; other files are unaffected."""

    status_code = 422
    code = "ingest_error"


class UnsupportedFileTypeError(IngestError):
    status_code = 415
    code = "unsupported_file_type"


class DocumentNotFoundError(RagServeError):
    status_code = 404
    code = "document_not_found"


class StoreError(RagServeError):
    status_code = 503
    code = "store_error"


class EmbedderMismatchError(StoreError):
    status_code = 409
    code = "embedder_mismatch"


class DatasetError(RagServeError):
    status_code = 400
    code = "dataset_error"


class GenerationError(RagServeError):
    status_code = 502
    code = "generation_error"


class LLMUnavailableError(GenerationError):
    status_code = 503
    code = "llm_unavailable"


class GenerationBusyError(LLMUnavailableError):
    """Every generation slot and queue place is taken: shed load instead of piling up."""

    status_code = 503
    code = "generation_busy"
    retry_after = 5
    """Seconds a client should wait (sent as the Retry-After header)."""


class GenerationTimeoutError(GenerationError):
    status_code = 504
    code = "generation_timeout"
