"""The error envelope of every non-2xx response."""

from __future__ import annotations

from pydantic import Field

from .common import ERROR_TYPES, _Response


class ErrorBody(_Response):
    """The `error` object of every non-2xx response."""

    message: str = Field(description="Human-readable explanation that says what to fix.")
    type: str = Field(description="Error class: one of " + ", ".join(ERROR_TYPES) + ".")
    param: str | None = Field(default=None, description="The request field at fault, if any.")
    code: str | None = Field(default=None, description="Machine-readable error code, if any.")


class ErrorResponse(_Response):
    """Envelope of every error response: ``{"error": {...}}``."""

    error: ErrorBody
