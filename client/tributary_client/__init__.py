"""Tributary client SDK: which training examples made the model say this?

    >>> import tributary_client
    >>> with tributary_client.Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     result = client.attribute("What is 2+2?", "4", top_k=5)
    ...     for ex in result.examples:
    ...         print(ex.example_id, ex.score, ex.text[:60])

This package is light on purpose (httpx, pydantic, tqdm): it never imports torch, faiss or
fastapi. `tributary_client.types` holds the wire types the server also uses.
"""

from . import types
from ._base_client import DEFAULT_BASE_URL, RequestSpec, make_attribution_request
from ._client import AsyncClient, Client
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RequestValidationError,
    TributaryError,
    UnavailableError,
)
from ._version import __version__
from .types import (
    AttributedExample,
    AttributionRequest,
    AttributionResponse,
    Batch,
    BatchResultLine,
    ChatMessage,
    Example,
    IndexInfo,
    TokenScore,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AsyncClient",
    "AttributedExample",
    "AttributionRequest",
    "AttributionResponse",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchResultLine",
    "ChatMessage",
    "Client",
    "Example",
    "IndexInfo",
    "InternalServerError",
    "NotFoundError",
    "RateLimitError",
    "RequestSpec",
    "RequestValidationError",
    "TokenScore",
    "TributaryError",
    "UnavailableError",
    "__version__",
    "make_attribution_request",
    "types",
]
