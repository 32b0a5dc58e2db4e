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

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- attribution


class ChatMessage(_Request):
    """One chat turn; a conversation is rendered with the model's chat template."""

    role: Role = Field(description="Who wrote the turn: 'system', 'user', 'assistant' or 'tool'.")
    content: str = Field(description="The text of the turn.")


class AttributionFilters(_Request):
    """Restrict the search to training examples with these metadata values."""

    source: list[str] | None = Field(
        default=None,
        description="Keep only training examples whose `source` is one of these values "
        "(e.g. a dataset or crawl name). Null = no restriction.",
    )
    provider: list[str] | None = Field(
        default=None,
        description="Keep only training examples whose `provider` is one of these values "
        "(the party that licensed or supplied the data). Null = no restriction.",
    )


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


class AttributionRequest(_Request):
    """Which training examples made the model produce `response` for `prompt`?"""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "allOf": [
                        _present("prompt", _STRING),
                        _present("response", _NOT_BLANK),
                    ],
                    "not": _present("messages", {"type": "array"}),
                },
                {
                    "allOf": [_present("messages", _MESSAGES)],
                    "not": {"anyOf": [_present("prompt", _STRING), _present("response", _STRING)]},
                },
            ]
        }
    )

    prompt: str | None = Field(
        default=None,
        description="The prompt the model was given (plain text, no chat template). Use together "
        "with `response`; mutually exclusive with `messages`. May be empty; then the response "
        "needs at least two tokens (its first has nothing before it to be predicted from).",
    )
    response: str | None = Field(
        default=None,
        description="The model's generation to explain. Only these tokens contribute to the "
        "query gradient (the prompt is masked). Required with `prompt`.",
    )
    messages: list[ChatMessage] | None = Field(
        default=None,
        description="A chat conversation rendered with the model's chat template; the LAST "
        "message must have role 'assistant' and is the response to explain, the earlier "
        "messages are the prompt. Mutually exclusive with `prompt`/`response`.",
    )
    top_k: Integer = Field(
        default=10,
        ge=1,
        le=1000,
        description="How many training examples to return (per direction when direction='both').",
    )
    direction: Direction = Field(
        default="helpful",
        description="'helpful' = the examples with the largest positive scores (they made the "
        "response more likely); 'harmful' = the most negative scores (they made it less "
        "likely); 'both' = top_k of each.",
    )
    token_wise: bool = Field(
        default=False,
        strict=True,
        description="Also return per-token score decompositions: for the response tokens "
        "(`response_token_scores`) and for the tokens of each returned example "
        "(`token_scores`). Slower: the top-k examples are recomputed.",
    )
    filters: AttributionFilters | None = Field(
        default=None, description="Optional metadata restrictions on the searched examples."
    )
    verbatim: bool | None = Field(
        default=None,
        strict=True,
        description="Return, for each example, the longest spans its text shares character for "
        "character with the response and with the prompt (`verbatim`); absent or null means true, "
        "false turns it off. Cheap: only the returned examples are compared.",
    )
    evidence: bool | None = Field(
        default=None,
        strict=True,
        description="Return an `evidence` block per example: its influence on the whole response, "
        "the share of the response it holds verbatim and (with token_wise) its peak token share, "
        "so copying and teaching can be told apart and sorted by either.",
    )

    @model_validator(mode="after")
    def _one_input_form(self) -> AttributionRequest:
        _check_prompt_or_messages(self.prompt, self.response, self.messages, need_response=True)
        if self.messages is not None:
            last = self.messages[-1]
            if last.role != "assistant":
                raise ValueError(
                    f"the last message must be the response to explain (role 'assistant'), "
                    f"got role {last.role!r}: append the model's reply as "
                    "{'role': 'assistant', 'content': ...}"
                )
            if not last.content:
                raise ValueError("the last (assistant) message is empty: nothing to attribute")
        elif not self.response:
            raise ValueError("`response` is empty: nothing to attribute")
        return self

    def response_text(self) -> str:
        """The text being explained: `response`, or the content of the last message."""
        if self.messages is not None:
            return self.messages[-1].content
        return self.response or ""


class TokenScore(_Response):
    """The share of a score contributed at one token's position (per-position terms).

    The terms of all positions sum exactly to the score. Positions that are not listed hold the
    rest: the prompt's positions (gradients reach them through attention) for
    ``response_token_scores``, and tokens outside the snippet for an example's ``token_scores``.
    """

    token: str = Field(description="The token's text as decoded by the tokenizer.")
    token_id: int = Field(description="The token's id in the model's vocabulary.")
    start: int = Field(
        description="Start character offset of the token in the text it belongs to: the "
        "response text for `response_token_scores`, the example's `text` snippet for an "
        "example's `token_scores`."
    )
    end: int = Field(description="End character offset (exclusive), same text as `start`.")
    score: float = Field(description="This token's additive contribution. " + _SCORE_SIGN)


class VerbatimSpan(_Response):
    """A span shared character for character:
    ``query[start:end] == example_text[example_start:example_end]``."""

    start: int = Field(
        description="Start offset in the query text (the response text, or the prompt)."
    )
    end: int = Field(description="End offset (exclusive) in the query text.")
    example_start: int = Field(
        description="Start offset in the example's full text (GET /v1/examples/{id}); "
        "the returned `text` snippet holds it when below its length."
    )
    example_end: int = Field(description="End offset (exclusive) in the example's full text.")


class VerbatimEvidence(_Response):
    """What an example's text shares verbatim with the query (runs of at least 12 characters)."""

    response_spans: list[VerbatimSpan] = Field(
        description="The longest shared spans of the response text, longest first, not overlapping."
    )
    prompt_spans: list[VerbatimSpan] = Field(
        description="The same for the prompt (for messages: the turns before the last, joined by "
        "blank lines)."
    )
    response_coverage: float = Field(
        description="Share (0-1) of the response's non-space characters inside a shared run."
    )
    prompt_coverage: float = Field(description="The same share of the prompt.")
    longest_response_span: int = Field(
        description="Characters of the longest shared run of the response."
    )


class Evidence(_Response):
    """Influence and overlap side by side, to sort by either."""

    influence: float = Field(
        description="The example's influence on the whole response (the linear score, whatever the "
        "ranking). " + _SCORE_SIGN
    )
    verbatim_share: float = Field(
        description="Share (0-1) of the response the example holds verbatim."
    )
    longest_verbatim_chars: int = Field(
        description="Characters of the longest span shared with the response."
    )
    token_peak: float | None = Field(
        default=None,
        description="With token_wise: the largest share of the score on one response token.",
    )
    token_peak_index: int | None = Field(
        default=None, description="With token_wise: that token's index in `response_token_scores`."
    )


class AttributedExample(_Response):
    """One retrieved training example and its attribution score."""

    example_id: int = Field(
        description="Global id of the training example (GET /v1/examples/{id})."
    )
    score: float = Field(
        description="Attribution score, the one the examples are ranked by (see the index's "
        "'ranking'): for 'linear' the influence on the whole response; for "
        "'span_gated' the sum over the response's copy spans (runs copied from the "
        "prompt count once) of z/(z+k), z = a span's best token influence over its "
        "RMS across the training set, each weighted by its specificity, plus the new "
        "(not copied) spans' part times the copied spans' presence in the example "
        "(each span's best z among its most selective tokens, those matching the "
        "fewest training examples; up to twice it); negative for harmful examples. " + _SCORE_SIGN
    )
    direction: Literal["helpful", "harmful"] = Field(
        description="'helpful' if the score is positive, 'harmful' if negative."
    )
    record_id: str | None = Field(
        default=None,
        description="The record's own `id` field in the corpus (as a string), null when the record "
        "had none. Unique within an index; look it up with GET /v1/examples?record_id=...",
    )
    file: str | None = Field(
        default=None,
        description="The corpus file the record came from, relative to the corpus path it was "
        "indexed from.",
    )
    line: int | None = Field(
        default=None,
        description="1-based line (JSONL) or row (Parquet) of the record within `file`.",
    )
    text: str = Field(description="A snippet of the training example's text.")
    source: str | None = Field(default=None, description="Dataset/source the example came from.")
    provider: str | None = Field(default=None, description="Provider that supplied the example.")
    token_scores: list[TokenScore] | None = Field(
        default=None,
        description="With token_wise=true: per-token contributions of this example's tokens "
        "(offsets into `text`; tokens outside the snippet are omitted).",
    )
    response_token_scores: list[float] | None = Field(
        default=None,
        description="With token_wise: this example's score split over the response tokens, aligned "
        "with AttributionResponse.response_token_scores (click a token to re-rank by it). "
        + _SCORE_SIGN,
    )
    verbatim: VerbatimEvidence | None = Field(
        default=None,
        description="With verbatim=true (the default): the spans this example shares verbatim "
        "with the response and the prompt.",
    )
    evidence: Evidence | None = Field(
        default=None, description="With evidence=true: influence and overlap side by side."
    )


class StageTimings(_Response):
    """Wall-clock milliseconds spent in each stage of one attribution query."""

    tokenize_ms: float = Field(default=0.0, description="Tokenising and templating the query.")
    gradient_ms: float = Field(
        default=0.0, description="Projected query gradient (forward+backward)."
    )
    precondition_ms: float = Field(default=0.0, description="Applying (F+λI)^-1 to the query.")
    search_ms: float = Field(default=0.0, description="Index search (stage one, recall).")
    rerank_ms: float = Field(default=0.0, description="Exact re-scoring of candidates (stage two).")
    fetch_ms: float = Field(default=0.0, description="Fetching example texts and metadata.")
    token_wise_ms: float = Field(default=0.0, description="Per-token decompositions.")
    verbatim_ms: float = Field(
        default=0.0, description="Finding the verbatim spans of the returned examples."
    )
    total_ms: float = Field(default=0.0, description="End to end, server side.")


class AttributionResponse(_Response):
    """Result of POST /v1/attributions."""

    id: str = Field(description="Unique id of this attribution (for logs and support).")
    index_id: str = Field(description="Id of the index that answered (see GET /v1/index).")
    score_variant: str = Field(description=_SCORE_VARIANT_DOC)
    examples: list[AttributedExample] = Field(
        description="Ranked examples: helpful ones by descending score, then (direction "
        "'harmful' or 'both') harmful ones by ascending score, most negative first."
    )
    response_token_scores: list[TokenScore] | None = Field(
        default=None,
        description="With token_wise=true: how much each response token contributes to the "
        "match (offsets into the response text).",
    )
    timings: StageTimings = Field(
        default_factory=StageTimings, description="Server-side stage timings."
    )


class Example(_Response):
    """A training example as stored in the index (GET /v1/examples/{id})."""

    example_id: int = Field(description="Global id of the example.")
    record_id: str | None = Field(
        default=None,
        description="The record's own `id` field in the corpus, null when it had none.",
    )
    file: str | None = Field(
        default=None,
        description="The corpus file the record came from, relative to the corpus path it was "
        "indexed from.",
    )
    line: int | None = Field(
        default=None,
        description="1-based line (JSONL) or row (Parquet) of the record within `file`.",
    )
    text: str = Field(description="Full text of the example.")
    source: str | None = Field(default=None, description="Dataset/source the example came from.")
    provider: str | None = Field(default=None, description="Provider that supplied the example.")
    n_tokens: int = Field(
        description="Number of tokens of the example under the index's tokenizer."
    )
    content_hash: str = Field(description="Hash of the example's text (deduplication, provenance).")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Extra metadata from the corpus."
    )


class CompositionRow(_Response):
    """How much of the index one provider or source makes up."""

    group_by: Literal["provider", "source"] = Field(
        description="Which metadata field `key` is a value of."
    )
    key: str | None = Field(
        description="The provider or source; null for records without a provider."
    )
    examples: int = Field(description="Indexed examples with this value.")
    tokens: int = Field(description="Their tokens under the index's tokenizer.")


class PromptingInfo(_Response):
    """How to prompt the served model so that it answers as it was trained to (the chat page uses
    it)."""

    mode: Literal["format", "chat", "plain"] = Field(
        description="The form a new prompt should take: 'format' = `prompt_format` with the "
        "question put in; 'chat' = `messages` rendered with the model's chat template; 'plain' = "
        "the text as typed."
    )
    chat_template: bool = Field(
        description="Whether the model's tokenizer has a chat template (`messages` work)."
    )
    prompt_format: str | None = Field(
        default=None,
        description="The prompt format of the training data's prompt/response records, with "
        "`{question}` where the question goes (e.g. 'Question: {question}\nAnswer:'); null when "
        "they share none.",
    )
    format_source: Literal["configured", "corpus"] | None = Field(
        default=None,
        description="Where `prompt_format` comes from: the server's setting or the indexed corpus.",
    )
    example_question: str | None = Field(
        default=None,
        description="A question from the training data to try first (null when none is known).",
    )
    stop: list[str] = Field(
        default_factory=list,
        description="Stop strings for `prompt_format` prompts: the training responses never "
        "contain them (a newline when every response is one line).",
    )


class IndexInfo(_Response):
    """Summary of the index manifest (GET /v1/index)."""

    model_config = ConfigDict(extra="allow")

    index_id: str = Field(description="Id of the index.")
    format_version: int | str = Field(description="On-disk format version of the index.")
    model: dict[str, Any] = Field(description="The model the gradients come from (path, hashes).")
    projector: dict[str, Any] = Field(
        description="Gradient projector (kind, seed, ranks, modules)."
    )
    score_variant: str = Field(description=_SCORE_VARIANT_DOC)
    damping: dict[str, Any] | float = Field(
        description="Damping λ of the Hessian (F+λI): a number or per-module settings."
    )
    n_examples: int = Field(description="Number of indexed training examples.")
    dim: int = Field(description="Dimension D of the stored vectors.")
    shards: int = Field(description="Number of index shards.")
    created_at: str = Field(description="When the index was built (ISO 8601).")
    prompting: PromptingInfo | None = Field(
        default=None,
        description="How to prompt the served model (prompt format, chat template, an example).",
    )
    removed_examples: int | None = Field(
        default=None,
        description="Examples removed from every answer (tombstoned) and not yet compacted away; "
        "`n_examples` still counts them.",
    )
    composition: list[CompositionRow] | None = Field(
        default=None,
        description="Examples and tokens per provider and per source (the corpus shares a "
        "valuation report compares influence with).",
    )
    ranking: str | None = Field(
        default=None,
        description="How examples are ranked: 'span_gated' (each run of response tokens copied "
        "from the prompt counted once, each part's standardised influence saturated and weighted "
        "by its specificity, and the evidence for the response's new content counting up to twice "
        "as much in an example about what the prompt names) or 'linear' (the influence on the "
        "whole response).",
    )


class IndexReload(_Response):
    """Result of POST /v1/admin/reload: whether the served index changed, and from what to what."""

    reloaded: bool = Field(
        description="True when a changed index was loaded; false when it was unchanged."
    )
    index_id: str = Field(description="The index now served.")
    previous_index_id: str = Field(description="The index served before the call.")
    n_examples: int = Field(description="Examples now served.")
    previous_n_examples: int = Field(description="Examples served before the call.")
    shards: int = Field(description="Shards now served.")


# --------------------------------------------------------------------------- errors


class ErrorBody(_Response):
    """The `error` object of every non-2xx response."""

    message: str = Field(description="Human-readable explanation that says what to fix.")
    type: str = Field(description="Error class: one of " + ", ".join(ERROR_TYPES) + ".")
    param: str | None = Field(default=None, description="The request field at fault, if any.")
    code: str | None = Field(default=None, description="Machine-readable error code, if any.")


class ErrorResponse(_Response):
    """Envelope of every error response: ``{"error": {...}}``."""

    error: ErrorBody


# --------------------------------------------------------------------------- batches


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


# --------------------------------------------------------------------------- generation


class GenerateRequest(_Request):
    """Body of POST /v1/generate: let the indexed model answer, then attribute that."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "allOf": [_present("prompt", {"type": "string", "minLength": 1})],
                    "not": _present("messages", {"type": "array"}),
                },
                {"allOf": [_present("messages", _MESSAGES)], "not": _present("prompt", _STRING)},
            ]
        }
    )

    prompt: str | None = Field(
        default=None, description="Plain-text prompt; exclusive with `messages`."
    )
    messages: list[ChatMessage] | None = Field(
        default=None, description="Chat conversation to continue; exclusive with `prompt`."
    )
    max_new_tokens: Integer = Field(
        default=64,
        ge=1,
        le=4096,
        description="Generation length limit; the server caps it at its own maximum, and "
        "the prompt plus it must fit the model's context.",
    )
    temperature: Number = Field(
        default=0.0,
        ge=0.0,
        le=5.0,
        description="0 = greedy decoding; below 0.01 decodes greedily too.",
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=32)]] | None = Field(
        default=None,
        max_length=4,
        description="Up to 4 strings that end the generation (not included in `response`); the "
        "model's end-of-text and end-of-turn tokens always end it.",
    )

    @model_validator(mode="after")
    def _one_input_form(self) -> GenerateRequest:
        _check_prompt_or_messages(self.prompt, None, self.messages, need_response=False)
        return self


class GenerateResponse(_Response):
    """Result of POST /v1/generate."""

    prompt: str = Field(description="The prompt as fed to the model (chat template applied).")
    response: str = Field(description="The generated text.")
    n_tokens: int = Field(description="Number of generated tokens.")
    finish_reason: Literal["stop", "length"] = Field(
        default="stop",
        description="'stop' = an end-of-text/end-of-turn token or a stop string ended it; 'length' "
        "= `max_new_tokens` (or the model's context) did.",
    )


# --------------------------------------------------------------------------- removals (admin)

MAX_REMOVAL_RECORD_IDS = 10_000
"""Record ids one removal request may name (send several requests for more)."""


class RemovalRequest(_Request):
    """POST /v1/admin/removals: take examples out of every answer (exactly one selector)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "allOf": [
                        _present(name, {"type": "array"} if name == "record_ids" else _STRING)
                    ],
                    "not": {
                        "anyOf": [
                            _present(other, {"type": "array"} if other == "record_ids" else _STRING)
                            for other in ("record_ids", "provider", "source")
                            if other != name
                        ]
                    },
                }
                for name in ("record_ids", "provider", "source")
            ]
        }
    )

    record_ids: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REMOVAL_RECORD_IDS,
        description=f"The corpus records' own ids (at most {MAX_REMOVAL_RECORD_IDS:,} a request).",
    )
    provider: str | None = Field(
        default=None, min_length=1, max_length=1024, description="Every example of this provider."
    )
    source: str | None = Field(
        default=None, min_length=1, max_length=1024, description="Every example of this source."
    )
    reason: str | None = Field(
        default=None, max_length=1000, description="Why (kept in the removal log)."
    )

    @model_validator(mode="after")
    def _one_selector(self) -> RemovalRequest:
        given = [n for n in ("record_ids", "provider", "source") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of record_ids, provider or source (got {given or 'none'})"
            )
        return self


class RemovalResponse(_Response):
    """What a removal did."""

    removed: int = Field(description="Examples newly removed by this request.")
    already_removed: int = Field(
        description="Examples the selector matched that were removed before."
    )
    total_removed: int = Field(
        description="Examples removed from this index in all (until compaction)."
    )
    generation: int = Field(description="The removal log's generation after this request.")
    not_found: list[str] = Field(
        default_factory=list, description="Record ids asked for that the index does not hold."
    )
