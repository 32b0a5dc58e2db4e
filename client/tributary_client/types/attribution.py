"""``POST /v1/attributions``: the request, the ranked examples with their token-wise scores
and verbatim evidence, and the stage timings."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .common import (
    _MESSAGES,
    _NOT_BLANK,
    _SCORE_SIGN,
    _SCORE_VARIANT_DOC,
    _STRING,
    ChatMessage,
    Direction,
    Integer,
    _check_prompt_or_messages,
    _present,
    _Request,
    _Response,
)


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
