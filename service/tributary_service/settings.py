"""Service settings: arguments or ``TRIBUTARY_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Ranking = Literal["linear", "span_gated"]
"""The rankings the service can apply (``tributary_indexer.config.RANKINGS``)."""


class ServiceSettings(BaseSettings):
    """Everything ``tributary serve`` can be told; each field is also ``TRIBUTARY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TRIBUTARY_", extra="ignore")

    index: Path = Field(description="Index directory built by `tributary index build`.")
    model: Path | None = Field(
        default=None,
        description="Model directory; default: the path recorded in the index manifest.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda, cuda:N.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys; empty = no auth. Env: "
        "comma-separated. Each key is a tenant: batch jobs and idempotency "
        "keys belong to the key that created them.",
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys of the admin routes (POST /v1/admin/reload); empty = they are "
        "disabled. Env: comma-separated.",
    )
    watch_index_s: float = Field(
        default=0.0,
        ge=0.0,
        description="Check the index's manifest every this many seconds and load a changed index "
        "(after `tributary index add`) between micro-batches; 0 = never (use POST /v1/admin/reload "
        "or restart).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed browser origins; env: comma-separated."
    )
    max_request_tokens: int = Field(
        default=1024, ge=8, description="Tokens (prompt + response) per attribution request."
    )
    max_top_k: int = Field(default=100, ge=1, description="Largest top_k a request may ask for.")
    max_body_bytes: int = Field(
        default=1_000_000, ge=1024, description="Largest request body (JSON) in bytes."
    )
    max_batch_body_bytes: int = Field(
        default=50_000_000, description="Largest POST /v1/batches body in bytes."
    )
    max_batch_tokens: int = Field(
        default=8192,
        ge=1,
        description="Padded tokens per micro-batched forward/backward; 1 runs every request alone "
        "(bit-reproducible scores, lower throughput).",
    )
    batch_window_ms: float = Field(
        default=5.0,
        ge=0,
        description="How long the micro-batcher waits for company once it has seen some (another "
        "request queued, or a previous batch of more than one); a lone request never waits.",
    )
    queue_size: int = Field(
        default=64, ge=1, description="Requests waiting for the model; past it: 429."
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After sent with 429/503.")
    snippet_chars: int = Field(
        default=400, ge=16, description="Characters of each example's text returned."
    )
    nprobe: int | None = Field(
        default=None,
        ge=1,
        description="IVF lists probed per query on compressed shards (recall vs speed; no effect "
        "on flat shards); unset = the manifest's (--index-factory auto records one), else 32.",
    )
    search_device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="Where the shards are searched: gpu (FAISS GPU: float16 first stage on every "
        "visible GPU, exact re-score with torch there; refused without the FAISS GPU build and "
        "a CUDA GPU), cpu, or auto (the GPU when present).",
    )
    rerank_factor: int = Field(
        default=10,
        ge=1,
        description="Compressed shards: candidates re-scored exactly per result wanted.",
    )
    # The ranking (tributary_indexer.config.RankingConfig): unset = what the index's manifest says.
    ranking: Ranking | None = Field(
        default=None, description="How examples are ranked; unset = what the index's manifest says."
    )
    saturation: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="span_gated: k of the saturating curve z/(z+k), in RMS units; unset = the "
        "manifest's.",
    )
    presence_k: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="span_gated: the score (RMS units) where a token matches an example; unset = "
        "the manifest's.",
    )
    presence_selectivity: float | None = Field(
        default=None,
        ge=1,
        allow_inf_nan=False,
        description="span_gated: a copied span's core matches at most this many times its rarest "
        "token's share.",
    )
    presence_floor: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="span_gated: the smallest share limit of a copied span's core.",
    )
    token_candidates: int | None = Field(
        default=None,
        ge=1,
        description="span_gated: first-stage candidates re-scored per query direction (at least "
        "top_k); unset = the manifest's (200).",
    )
    reference_rows: int | None = Field(
        default=None,
        ge=1,
        description="span_gated: stored vectors in the reference sample kept in memory; unset = "
        "the manifest's (4096).",
    )
    verify_checksums: bool = Field(
        default=True, description="sha256 every index file at startup (slow for huge indexes)."
    )
    enable_generate: bool = Field(
        default=False, description="Serve POST /v1/generate with the model (the demo page uses it)."
    )
    max_new_tokens: int = Field(
        default=128,
        ge=1,
        description="Cap for /v1/generate: a request asking for more gets this many.",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1024,
        description="Largest request head (request line and headers) in "
        "bytes; past it: 431 and the connection is closed.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send a request's "
        "headers before it is closed.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request body may pause between two chunks "
        "before the request is refused (408).",
    )
    keep_alive_s: int = Field(
        default=5, ge=1, description="Seconds an idle keep-alive connection stays open."
    )
    max_connections: int = Field(
        default=1000,
        ge=8,
        description="Open connections; a new one past it closes the oldest "
        "connection still waiting for its headers (or, when none is, gets a 503).",
    )
    max_batch_lines: int = Field(default=50_000, ge=1, description="Requests per batch job.")
    max_open_batches: int = Field(
        default=16, ge=1, description="Unfinished batch jobs per API key; past it: 429."
    )
    batch_retention_days: float = Field(
        default=7.0,
        gt=0,
        description="Finished batch jobs (and their results) are "
        "deleted this many days after they finish.",
    )
    prompt_format: str | None = Field(
        default=None,
        description="The prompt format the model was trained on, with {question} where the "
        "question goes (e.g. 'Question: {question}\\nAnswer:'); the chat page wraps questions in "
        "it. Default: inferred from the index's prompt/response records.",
    )
    state_dir: Path | None = Field(
        default=None,
        description="Where batch jobs persist (SQLite); default <index>/../<index-name>.service",
    )
    serve_page: bool = Field(default=True, description="Serve the chat page at /.")
    num_threads: int | None = Field(
        default=None,
        description="torch CPU threads of the model thread; default: the cores this "
        "process may run on. (`tributary serve` also lets OpenBLAS threads sleep after each scan; "
        "their spin-waits had doubled the model's time on 2 cores.)",
    )

    @field_validator("prompt_format")
    @classmethod
    def _one_question(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.replace(
                "\\n", "\n"
            )  # a shell's 'Question: {question}\nAnswer:' means a newline
        if value is not None and value.count("{question}") != 1:
            raise ValueError(
                "prompt_format must hold {question} exactly once, e.g. 'Question: "
                "{question}\\nAnswer:'"
            )
        return value

    @field_validator("api_keys", "admin_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        """Environment variables give comma-separated lists."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def ranking_overrides(self) -> dict[str, Any]:
        """The :class:`~tributary_indexer.config.RankingConfig` fields set here (the rest: the
        manifest's)."""
        values = {
            "ranking": self.ranking,
            "saturation": self.saturation,
            "presence_k": self.presence_k,
            "presence_selectivity": self.presence_selectivity,
            "presence_floor": self.presence_floor,
            "candidates": self.token_candidates,
            "reference_rows": self.reference_rows,
        }
        return {k: v for k, v in values.items() if v is not None}

    def resolved_num_threads(self) -> int:
        import os

        if self.num_threads:
            return self.num_threads
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )

    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        index = self.index.resolve()
        return index.parent / f"{index.name}.service"
