"""The ``tributary`` command line (client commands and delegation)."""

from __future__ import annotations

import json
import sys
import types as pytypes
from pathlib import Path

import httpx
import pytest
import tributary_client as tc
from client_fakes import BASE_URL, FakeTributary, fake_attribution
from tributary_client import cli


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch, fake: FakeTributary) -> FakeTributary:
    def make(args):  # type: ignore[no-untyped-def]
        c = tc.Client(
            args.base_url or BASE_URL,
            api_key=args.api_key,
            max_retries=args.max_retries,
            transport=httpx.MockTransport(fake),
        )
        c._sleep = lambda s: None  # type: ignore[method-assign]
        return c

    monkeypatch.setattr(cli, "_make_client", make)
    return fake


def test_attribute_table(fake_cli: FakeTributary, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(
        [
            "--api-key",
            "k",
            "attribute",
            "--prompt",
            "2+2?",
            "--response",
            "four",
            "--top-k",
            "3",
            "--direction",
            "both",
            "--source",
            "wiki",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("index idx-test · relatif · 6 examples")
    assert "direction" in lines[1] and "score" in lines[1]
    assert lines[2].split()[:2] == ["1", "helpful"] and lines[5].split()[:2] == ["1", "harmful"]
    shown = tc.AttributionResponse.model_validate(
        fake_attribution(json.loads(fake_cli.requests[0].content))
    ).examples
    for line, ex in zip(lines[2:], shown):  # the record's own id, or #example_id when it has none
        assert line.split()[3] == (ex.record_id or f"#{ex.example_id}")
    body = json.loads(fake_cli.requests[0].content)
    assert (
        body["filters"] == {"source": ["wiki"]}
        and fake_cli.requests[0].headers["authorization"] == "Bearer k"
    )


def test_attribute_json_and_messages(
    fake_cli: FakeTributary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    msgs = tmp_path / "m.json"
    msgs.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            }
        )
    )
    assert cli.main(["attribute", "--messages-json", str(msgs), "--json", "--top-k", "2"]) == 0
    parsed = tc.AttributionResponse.model_validate_json(capsys.readouterr().out)
    assert len(parsed.examples) == 2


def test_token_wise_highlighting(
    fake_cli: FakeTributary, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "attribute",
        "--prompt",
        "p",
        "--response",
        "alpha beta gamma delta",
        "--token-wise",
        "--top-k",
        "1",
    ]
    assert cli.main([*argv, "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out and "↳ top tokens" in out
    assert "\x1b[1;37;41mdelta\x1b[0m" in out  # most negative token: strong red
    assert "\x1b[1;30;42mgamma\x1b[0m" in out  # most positive token: strong green
    assert cli.main([*argv, "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "highest scores: 'gamma' +0.3" in out


def test_errors_are_one_line_without_traceback(
    fake_cli: FakeTributary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["attribute", "--prompt", "p"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid request: missing `response`") and err.count("\n") == 1
    assert cli.main(["attribute", "--prompt", "p", "--response", "REJECT-ME"]) == 1
    err = capsys.readouterr().err
    assert (
        err == "error: response is too long for the model (status 400, param response, request id "
        "req-test)\n"
    )
    assert cli.main(["example", "5000"]) == 1
    assert "no example with id 5000" in capsys.readouterr().err
    fake_cli.on_request = lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused"))
    assert cli.main(["--max-retries", "0", "index-info"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Tributary API" in err and "Traceback" not in err
    assert cli.main(["attribute", "--messages-json", "/nonexistent.json"]) == 1


def test_example_index_info_generate(
    fake_cli: FakeTributary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["example", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("example 5 · record rec-5 (part-1.jsonl:7) · source wiki · provider acme")
    assert "full text of 5" in out
    assert cli.main(["example", "--record-id", "rec-7"]) == 0
    assert capsys.readouterr().out.startswith("example 7 · record rec-7")
    assert fake_cli.requests[-1].url.params["record_id"] == "rec-7"
    assert cli.main(["example"]) == 2 and "--record-id" in capsys.readouterr().err
    assert cli.main(["index-info"]) == 0
    assert "n_examples      1000" in capsys.readouterr().out
    assert cli.main(["index-info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer"] == {"hash": "t0"}
    assert cli.main(["generate", "--prompt", "2+2="]) == 0
    assert capsys.readouterr().out == " four\n"


def test_batch_and_report_commands(
    fake_cli: FakeTributary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs.jsonl"
    logs.write_text(
        "".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(5))
    )
    out = tmp_path / "res.jsonl"
    rc = cli.main(
        [
            "batch",
            str(logs),
            "-o",
            str(out),
            "--concurrency",
            "2",
            "--top-k",
            "3",
            "--report",
            str(tmp_path / "rep"),
            "--no-progress",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert (
        "5 generations, 0 already done, 5 attributed, 0 failed in this run" in err
        and "--retry-failed" not in err
    )
    assert len(out.read_text().splitlines()) == 5
    assert (tmp_path / "rep.csv").exists() and (tmp_path / "rep.md").exists()
    assert cli.main(["report", str(out), "-o", str(tmp_path / "rep2")]) == 0
    assert (tmp_path / "rep2.csv").read_bytes() == (tmp_path / "rep.csv").read_bytes()
    logs.write_text('{"prompt": "p"}\n')
    assert (
        cli.main(["batch", str(logs), "-o", str(tmp_path / "x.jsonl"), "--no-progress"])
        == cli.EXIT_LINES_FAILED
    )
    err = capsys.readouterr().err
    assert (
        "1 line(s) of" in err
        and f"1 invalid_log_line: e.g. {logs}:1: has 'prompt' but no 'response'" in err
    )
    assert "rerun with --retry-failed" in err
    out.write_text('{"custom_id": "someone-else"}\n')
    assert (
        cli.main(["batch", str(logs), "-o", str(out), "--no-progress"]) == 2
    )  # not this logs file's output
    assert "is it the output of another logs file?" in capsys.readouterr().err


def test_connection_options_after_the_command(
    fake_cli: FakeTributary, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tributary attribute --base-url ... --api-key ...`, as the deployment guide writes it."""
    rc = cli.main(
        [
            "attribute",
            "--base-url",
            "http://elsewhere.test",
            "--api-key",
            "k2",
            "--max-retries",
            "0",
            "--prompt",
            "p",
            "--response",
            "r",
            "--top-k",
            "1",
        ]
    )
    assert rc == 0
    request = fake_cli.requests[-1]
    assert request.url.host == "elsewhere.test" and request.headers["authorization"] == "Bearer k2"
    # before the command still works, and an option given before is not reset by the subparser
    assert cli.main(["--api-key", "k1", "index-info", "--json"]) == 0
    assert fake_cli.requests[-1].headers["authorization"] == "Bearer k1"
    assert cli.main(["--api-key", "k1", "example", "5", "--api-key", "k3"]) == 0
    assert fake_cli.requests[-1].headers["authorization"] == "Bearer k3"  # the later one wins
    capsys.readouterr()
    assert cli.main(["batch", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--base-url" in help_text and "--retry-failed" in help_text
    for code in (0, 1, 2, 3, 130):
        assert f"{code} = " in help_text


def test_delegation_to_indexer_and_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setitem(
        sys.modules,
        "tributary_indexer.cli",
        pytypes.SimpleNamespace(main=lambda argv: calls.append(argv) or 3),
    )
    monkeypatch.setitem(
        sys.modules,
        "tributary_service.cli",
        pytypes.SimpleNamespace(main=lambda argv: calls.append(argv)),
    )
    assert cli.main(["index", "build", "--help", "-o", "x"]) == 3
    assert cli.main(["serve", "--port", "9"]) == 0
    assert cli.main(["-v", "index", "--model", "gpt2"]) == 3  # global option first: via argparse
    assert calls == [["build", "--help", "-o", "x"], ["--port", "9"], ["--model", "gpt2"]]

    def exits(argv: list[str]) -> int:
        raise SystemExit(0)  # e.g. argparse --help inside the delegated CLI

    monkeypatch.setitem(sys.modules, "tributary_service.cli", pytypes.SimpleNamespace(main=exits))
    assert cli.main(["serve", "--help"]) == 0

    monkeypatch.setitem(sys.modules, "tributary_service.cli", None)  # import fails
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "install the indexer/service extra: pip install 'tributary[service]'" in err
    monkeypatch.setitem(sys.modules, "tributary_indexer.cli", None)
    assert cli.main(["index", "build"]) == 2
    assert "pip install 'tributary[indexer]'" in capsys.readouterr().err


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("attribute", "batch", "example", "index-info", "index", "serve"):
        assert command in out
    assert cli.main([]) == 2
    assert cli.main(["attribute", "--direction", "sideways"]) == 2
