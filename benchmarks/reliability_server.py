"""The reliability runs' live server: the fixture index, a ``tributary serve`` process with or
without API keys, and its count of 5xx answers (:mod:`benchmarks.reliability`)."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer"), str(ROOT / "service"), str(ROOT / "client")]

from tests.service.live_server import (  # noqa: E402
    free_port,
    running_server,
    server_command,
    server_env,
)

KEYS = ("rel-key-one", "rel-key-two")
QA = {"prompt": "What did Alba sell in year 1001?", "response": " Alba sold lanterns."}
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# --------------------------------------------------------------------------- the server


def run_env(**extra: str) -> dict[str, str]:
    return server_env(**{"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **extra})


@dataclass
class Server:
    base: str
    pid: int
    log: Path

    def rss_mib(self) -> float:
        import psutil

        return float(psutil.Process(self.pid).memory_info().rss) / 2**20


@contextlib.contextmanager
def serve(
    index: Path,
    model: Path,
    state_dir: Path,
    keys: tuple[str, ...] = (),
    timeout: float = 120.0,
    **settings: str,
) -> Iterator[Server]:
    """A ``tributary serve`` process on loopback (generation on); SIGTERM, then SIGKILL, at exit."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / f"server-{port}.log"
    env = {"TRIBUTARY_NUM_THREADS": "1", "TRIBUTARY_STATE_DIR": str(state_dir), **settings}
    if keys:
        env["TRIBUTARY_API_KEYS"] = ",".join(keys)
    cmd = server_command(index, model, port, "--enable-generate")
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, run_env(**env), log, base, timeout) as proc:
        yield Server(base, proc.pid, log)


def build_fixture_index(root: Path) -> tuple[Path, Path]:
    """The service tests' index: a tiny random GPT-2 (256 positions) over 60 generated records."""
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl

    if (root / "index" / "manifest.json").is_file():
        return root / "index", root / "model"
    root.mkdir(parents=True, exist_ok=True)
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(60))
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=25,
        progress=False,
        damping=0.01,
    )
    IndexBuilder(config, root / "index").build()
    return root / "index", model


def server_errors(base: str) -> int:
    """5xx answers the server has counted (``tributary_requests_total``), whatever the client
    saw."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return int(
        sum(
            float(v)
            for v in re.findall(r'tributary_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)', text)
        )
    )
