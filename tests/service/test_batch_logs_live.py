"""`tributary batch` over messy real logs, against a real server on loopback.

The server runs a tiny real GPT-2 whose tokenizer has no chat template, so a chat log is a
request the server itself refuses. With an empty assistant reply and a line that is not JSON
next to it, the run must finish, record the three as failed lines, exit non-zero, and
``--retry-failed`` must re-attempt exactly those once they are fixed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl
from tests.service.live_server import live_server, server_env

EXIT_LINES_FAILED = 3


@pytest.fixture(scope="module")
def template_free_index(tmp_path_factory) -> tuple[Path, Path]:
    """A built index over a model whose tokenizer has no chat template."""
    from transformers import AutoTokenizer
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    root = tmp_path_factory.mktemp("batch-live")
    model = build_model_dir(root / "model", "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = None
    for leftover in model.glob("chat_template*"):
        leftover.unlink()
    tokenizer.save_pretrained(model)
    assert not getattr(AutoTokenizer.from_pretrained(model), "chat_template", None)
    records = [
        r for r in corpus_records(45) if "messages" not in r
    ]  # documents and prompt/response pairs
    corpus = write_jsonl(root / "corpus.jsonl", records)
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=25,
        progress=False,
        damping=0.01,
        num_threads=1,
    )
    IndexBuilder(config, root / "index").build()
    return root / "index", model


def _logs(
    path: Path, *, empty_fixed: bool = False, json_fixed: bool = False, chat_as_prompt: bool = False
) -> Path:
    good = [
        {
            "custom_id": f"gen-{i}",
            "prompt": f"What did Alba sell in year {1001 + 3 * i}?",
            "response": " Alba sold lanterns.",
        }
        for i in range(4)
    ]
    empty = {
        "id": "cmpl-empty",
        "request": {"prompt": "Where did Borin live?"},  # a completion log, empty reply
        "response": {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": " Borin lives in Oskel." if empty_fixed else "",
                    }
                }
            ]
        },
    }
    chat = (
        {
            "custom_id": "chat-1",
            "prompt": "Where did Cyra live?",
            "response": " Cyra lives in Mebbe.",
        }
        if chat_as_prompt
        else {
            "custom_id": "chat-1",
            "messages": [
                {"role": "user", "content": "Where did Cyra live?"},
                {"role": "assistant", "content": "Cyra lives in Mebbe."},
            ],
        }
    )
    broken = '{"prompt": "What did Dovan sell?", "response": " Dovan sold salt."' + (
        "}" if json_fixed else ""
    )
    lines = [
        json.dumps(good[0]),
        json.dumps(empty),
        json.dumps(good[1]),
        broken,
        json.dumps(chat),
        json.dumps(good[2]),
        json.dumps(good[3]),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _batch(base: str, logs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # connection options after the command, as the deployment guide writes them
    cmd = [
        sys.executable,
        "-m",
        "tributary_client.cli",
        "batch",
        str(logs),
        "-o",
        str(out),
        "--base-url",
        base,
        "--max-retries",
        "0",
        "--concurrency",
        "2",
        "--top-k",
        "3",
        "--no-progress",
        *extra,
    ]
    return subprocess.run(cmd, env=server_env(), capture_output=True, text=True, timeout=300)


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_batch_records_bad_lines_exits_nonzero_and_retries_them(
    template_free_index, tmp_path: Path
) -> None:
    index, model = template_free_index
    logs, out = _logs(tmp_path / "logs.jsonl"), tmp_path / "results.jsonl"
    with live_server(index, model, tmp_path / "state") as base:
        first = _batch(base, logs, out)
        assert first.returncode == EXIT_LINES_FAILED, first.stderr
        results = _results(out)
        order = ["gen-0", "cmpl-empty", "gen-1", "line-4", "chat-1", "gen-2", "gen-3"]
        assert [r["custom_id"] for r in results] == order  # the run went on past every bad line
        failed = {r["custom_id"]: r["error"] for r in results if r["error"]}
        assert sorted(failed) == ["chat-1", "cmpl-empty", "line-4"]
        assert all(r["response"]["examples"] for r in results if not r["error"])
        assert (
            failed["cmpl-empty"]["code"] == "invalid_log_line"
            and "empty" in failed["cmpl-empty"]["message"]
        )
        assert (
            failed["line-4"]["code"] == "invalid_json"
            and f"{logs}:4: not valid JSON" in failed["line-4"]["message"]
        )
        assert (
            failed["chat-1"]["code"] == "tokenization_failed"
            and "chat" in failed["chat-1"]["message"]
        )
        summary = first.stderr
        assert "7 generations, 0 already done, 4 attributed, 3 failed in this run" in summary
        assert "3 line(s) of" in summary
        for reason in ("invalid_log_line", "invalid_json", "tokenization_failed"):
            assert f"1 {reason}: e.g." in summary
        assert "--retry-failed" in summary

        # a plain rerun keeps the failures and still says so, with the same exit status
        again = _batch(base, logs, out)
        assert (
            again.returncode == EXIT_LINES_FAILED and "7 already done, 0 attributed" in again.stderr
        )
        assert _results(out) == results

        # fix the empty reply and the broken line; the chat log still meets a template-free model
        _logs(logs, empty_fixed=True, json_fixed=True)
        retried = _batch(base, logs, out, "--retry-failed")
        assert retried.returncode == EXIT_LINES_FAILED, retried.stderr
        assert "2 attributed, 1 failed in this run (3 failed lines retried)" in retried.stderr, (
            retried.stderr
        )
        now = _results(out)
        assert [r["custom_id"] for r in now] == order  # each result took its failed line's place
        assert [r for r in now if r["custom_id"].startswith("gen-")] == [
            r for r in results if r["custom_id"].startswith("gen-")
        ]
        assert {r["custom_id"] for r in now if r["error"]} == {"chat-1"}
        assert now[1]["response"]["examples"] and now[3]["response"]["examples"]

        # send it as prompt/response instead: the last retry succeeds and the run exits 0
        _logs(logs, empty_fixed=True, json_fixed=True, chat_as_prompt=True)
        last = _batch(base, logs, out, "--retry-failed")
        assert last.returncode == 0, last.stderr
        assert "1 attributed, 0 failed in this run (1 failed lines retried)" in last.stderr
        final = _results(out)
        assert [r["custom_id"] for r in final] == order and not any(r["error"] for r in final)
        assert not (tmp_path / "results.jsonl.retry").exists()
