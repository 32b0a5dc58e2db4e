"""Shared pieces of the wire types: the literal types, strict number fields, the request and
response bases, chat turns and the schema helpers of requests given as a prompt or as
messages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

Role = Literal["system", "user", "assistant", "tool"]
Direction = Literal["helpful", "harmful", "both"]
ScoreVariant = Literal["influence", "relatif", "cosine", "grad_dot"]
SCORE_VARIANTS: tuple[str, ...] = ("influence", "relatif", "cosine", "grad_dot")
ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "not_found_error",
    "rate_limit_error",
    "unavailable_error",
    "server_error",
]
ERROR_TYPES: tuple[str, ...] = (
    "invalid_request_error",
    "authentication_error",
    "not_found_error",
    "rate_limit_error",
    "unavailable_error",
    "server_error",
)
BatchStatus = Literal["validating", "in_progress", "completed", "failed", "cancelling", "cancelled"]
TERMINAL_BATCH_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

_SCORE_SIGN = (
    "Sign convention: positive = the training example made the response more likely "
    "(lowered its loss), negative = it made the response less likely."
)
_SCORE_VARIANT_DOC = (
    "How scores are normalised, fixed when the index is built: 'influence' (the default) = "
    "<g(z), (F+λI)^-1 g(query)>; 'relatif' = influence divided by the training example's "
    "self-influence sqrt(g(z)ᵀ(F+λI)^-1 g(z)); 'cosine' = cosine "
    "similarity in the preconditioned metric; 'grad_dot' = plain gradient dot product "
    "(TracIn at one checkpoint, identity Hessian)."
)


def _integral(value: Any) -> Any:
    """JSON integers as JSON Schema counts them: ``10`` and ``10.0``, never ``"10"`` or ``true``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_integral), Field(strict=True)]
"""A strict integer field of a request: no strings, no booleans, integral floats allowed."""
Number = Annotated[float, Field(strict=True)]
"""A strict number field of a request: no strings, no booleans."""


class _Request(BaseModel):
    """Base of the models a client sends: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    """Base of the models a server returns: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    _request_id: str | None = PrivateAttr(default=None)

    @property
    def request_id(self) -> str | None:
        """The ``x-request-id`` of the HTTP response this object was read from (quote it when
        reporting a problem); None for an object built or loaded from a file."""
        return self._request_id


class ChatMessage(_Request):
    """One chat turn; a conversation is rendered with the model's chat template."""

    role: Role = Field(description="Who wrote the turn: 'system', 'user', 'assistant' or 'tool'.")
    content: str = Field(description="The text of the turn.")


def _check_prompt_or_messages(
    prompt: str | None,
    response: str | None,
    messages: list[ChatMessage] | None,
    *,
    need_response: bool,
) -> None:
    """Shared rule: a request is either prompt(+response) or messages, never both."""
    if messages is not None:
        extra = [n for n, v in (("prompt", prompt), ("response", response)) if v is not None]
        if extra:
            raise ValueError(
                f"give either `messages` or `prompt`"
                f"{'/`response`' if need_response else ''}, not both: drop "
                + " and ".join(f"`{n}`" for n in extra)
                + " or drop `messages`"
            )
        if not messages:
            raise ValueError("`messages` is empty: pass at least one message")
        return
    if need_response:
        missing = [n for n, v in (("prompt", prompt), ("response", response)) if v is None]
        if missing:
            raise ValueError(
                "missing "
                + " and ".join(f"`{n}`" for n in missing)
                + ": give `prompt` and `response` (the model's generation), or `messages` "
                "ending with the assistant's reply"
            )
    elif prompt is None:
        raise ValueError("missing input: give `prompt` or `messages`")


def _present(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema: ``name`` is given and not null (null counts as absent)."""
    return {"required": [name], "properties": {name: schema}}


_STRING = {"type": "string"}
# A response with something to attribute: a character Python's ``str.strip`` keeps. ECMA's ``\s``
# (the schema's regex dialect) lacks the separators U+001C-U+001F and U+0085, which Python strips,
# and has U+FEFF, which Python keeps.
_NOT_BLANK = {"type": "string", "pattern": "[^\\s\\x1c-\\x1f\\x85]|\\ufeff"}
_MESSAGES = {"type": "array", "minItems": 1}
