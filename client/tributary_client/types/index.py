"""The index side of the API: stored examples, what the server serves, reloads and removals."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from .common import (
    _SCORE_VARIANT_DOC,
    _STRING,
    _present,
    _Request,
    _Response,
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
