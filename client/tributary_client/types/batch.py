"""Batch jobs: the JSONL lines sent, the job's state, and the result lines."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from .attribution import AttributionRequest, AttributionResponse
from .common import TERMINAL_BATCH_STATUSES, BatchStatus, _Request, _Response
from .errors import ErrorBody


class BatchRequestCounts(_Response):
    """Progress counters of a batch job."""

    total: int = Field(default=0, description="Number of requests in the batch.")
    completed: int = Field(default=0, description="Requests that finished successfully.")
    failed: int = Field(default=0, description="Requests that finished with an error.")


class Batch(_Response):
    """An asynchronous attribution job (shaped like the OpenAI Batch API)."""

    id: str = Field(description="Id of the batch job.")
    status: BatchStatus = Field(
        description="validating -> in_progress -> completed | failed; cancel moves it to "
        "cancelling -> cancelled. Jobs survive a server restart."
    )
    created_at: int = Field(description="Creation time, Unix seconds.")
    completed_at: int | None = Field(default=None, description="End time, Unix seconds.")
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)
    errors: list[str] | None = Field(default=None, description="Job-level errors, if any.")
    metadata: dict[str, Any] | None = Field(default=None, description="Metadata given at creation.")

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change any more (completed, failed or cancelled)."""
        return self.status in TERMINAL_BATCH_STATUSES


class BatchDeleted(_Response):
    """Result of DELETE /v1/batches/{id}."""

    id: str = Field(description="Id of the deleted batch job.")
    deleted: bool = Field(description="True: the job and its results are gone.")


class BatchRequestLine(_Request):
    """One request of a batch."""

    custom_id: str = Field(
        min_length=1, description="Caller's id, echoed in the result line; unique within the batch."
    )
    body: AttributionRequest


class BatchCreateRequest(_Request):
    """Body of POST /v1/batches."""

    requests: list[BatchRequestLine] = Field(min_length=1, description="The attribution requests.")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Free-form metadata kept with the job."
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> BatchCreateRequest:
        seen: set[str] = set()
        for i, line in enumerate(self.requests):
            if line.custom_id in seen:
                raise ValueError(
                    f"duplicate custom_id {line.custom_id!r} (requests[{i}]): custom_ids must be "
                    "unique"
                )
            seen.add(line.custom_id)
        return self


class BatchResultLine(_Response):
    """One line of GET /v1/batches/{id}/results (JSONL) and of `tributary batch` output."""

    custom_id: str = Field(description="The request's custom_id.")
    response: AttributionResponse | None = Field(
        default=None, description="The result, on success."
    )
    error: ErrorBody | None = Field(default=None, description="The error, on failure.")
