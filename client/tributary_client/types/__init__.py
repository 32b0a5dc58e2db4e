"""Wire types of the Tributary REST API (``/v1``): the one source of truth.

The FastAPI service imports these models as its request and response schemas, so the
``Field(description=...)`` texts end up in the OpenAPI document: they explain what a field
*means*, not only its type.

Compatibility rules:

* request models (what a client sends) forbid unknown fields, so a typo such as ``topk``
  is a 422 that names the field instead of being silently ignored;
* response models ignore unknown fields, so an older client keeps working against a newer
  server that adds fields.
"""

from __future__ import annotations

from .attribution import (
    AttributedExample,
    AttributionFilters,
    AttributionRequest,
    AttributionResponse,
    Evidence,
    StageTimings,
    TokenScore,
    VerbatimEvidence,
    VerbatimSpan,
)
from .batch import (
    Batch,
    BatchCreateRequest,
    BatchDeleted,
    BatchRequestCounts,
    BatchRequestLine,
    BatchResultLine,
)
from .common import (
    ERROR_TYPES,
    SCORE_VARIANTS,
    TERMINAL_BATCH_STATUSES,
    BatchStatus,
    ChatMessage,
    Direction,
    ErrorType,
    Role,
    ScoreVariant,
)
from .errors import ErrorBody, ErrorResponse
from .generation import GenerateRequest, GenerateResponse
from .index import (
    CompositionRow,
    Example,
    IndexInfo,
    IndexReload,
    PromptingInfo,
    RemovalRequest,
    RemovalResponse,
)

__all__ = [
    "ERROR_TYPES",
    "SCORE_VARIANTS",
    "TERMINAL_BATCH_STATUSES",
    "AttributedExample",
    "AttributionFilters",
    "AttributionRequest",
    "AttributionResponse",
    "Batch",
    "BatchCreateRequest",
    "BatchDeleted",
    "BatchRequestCounts",
    "BatchRequestLine",
    "BatchResultLine",
    "BatchStatus",
    "ChatMessage",
    "CompositionRow",
    "Evidence",
    "RemovalRequest",
    "RemovalResponse",
    "VerbatimEvidence",
    "VerbatimSpan",
    "Direction",
    "ErrorBody",
    "ErrorResponse",
    "ErrorType",
    "Example",
    "GenerateRequest",
    "GenerateResponse",
    "IndexInfo",
    "IndexReload",
    "PromptingInfo",
    "Role",
    "ScoreVariant",
    "StageTimings",
    "TokenScore",
]
