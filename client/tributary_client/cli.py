"""The ``tributary`` command line.

Client commands (light: httpx + pydantic only)::

    tributary attribute --prompt P --response R [--top-k N] [--direction D] [--token-wise] [--json]
    tributary batch LOGS.jsonl -o RESULTS.jsonl [--concurrency N] [--report PREFIX]
                    [--retry-failed] [--no-progress]
    tributary report RESULTS.jsonl -o PREFIX [--index-info FILE | --offline]
    tributary example ID | example --record-id RID | index-info | generate --prompt P

Server-side commands, delegated (need the extras): ``tributary index ...`` runs
``tributary_indexer.cli.main``, ``tributary serve ...`` runs ``tributary_service.cli.main``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO, get_args

from pydantic import ValidationError

from ._base_client import make_attribution_request
from ._client import Client
from ._exceptions import APIError, RequestValidationError
from .attribution_view import one_line, print_attribution
from .types import Direction, IndexInfo

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "main"]

_DELEGATES = {
    "index": ("tributary_indexer.cli", "indexer", "build and inspect indexes"),
    "serve": ("tributary_service.cli", "service", "run the API server"),
}


def _make_client(args: argparse.Namespace) -> Client:
    """The client the commands use (tests replace this to inject a transport)."""
    return Client(
        base_url=args.base_url,
        api_key=args.api_key,
        timeout=args.timeout,
        max_retries=args.max_retries,
    )


# --------------------------------------------------------------------------- rendering


def _print_json(model: Any, out: TextIO) -> None:
    out.write(model.model_dump_json(indent=2) + "\n")


# --------------------------------------------------------------------------- commands


def _load_messages(path: str) -> list[Any]:
    if path == "-":
        data = json.load(sys.stdin)
    else:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list):
        raise ValueError(f'{path}: expected a JSON list of messages or {{"messages": [...]}}')
    return data


def _use_color(args: argparse.Namespace) -> bool:
    if args.color == "always":
        return True
    if args.color == "never" or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def cmd_attribute(args: argparse.Namespace) -> int:
    messages = _load_messages(args.messages_json) if args.messages_json else None
    request = make_attribution_request(
        args.prompt,
        args.response,
        messages=messages,
        top_k=args.top_k,
        direction=args.direction,
        token_wise=args.token_wise,
        source=args.source,
        provider=args.provider,
    )
    with _make_client(args) as client:
        result = client.attribute_request(request)
    if args.json:
        _print_json(result, sys.stdout)
    else:
        print_attribution(result, request.response_text(), color=_use_color(args), out=sys.stdout)
    return 0


BATCH_EXIT_CODES = {
    0: "every generation of the logs is attributed",
    1: "the run stopped on an error that concerns every line (server unreachable, "
    "authentication, rate limit or 5xx after the retries, a file error): fix it and rerun, "
    "it resumes where it stopped",
    2: "usage error, or the results file is not a results file of these logs",
    3: "the run finished but some lines failed (recorded in the output with the reason, "
    "listed in the summary): fix them and rerun with --retry-failed",
    130: "interrupted (Ctrl-C): rerun the same command to resume",
}
EXIT_LINES_FAILED = 3


def _print_batch_summary(summary: Any, out: TextIO) -> None:
    out.write(
        f"{summary.out_path}: {summary.total} generations, {summary.skipped} already done, "
        f"{summary.succeeded} attributed, {summary.failed} failed in this run"
        + (f" ({summary.retried} failed lines retried)" if summary.retried else "")
        + "\n"
    )
    if not summary.failures:
        return
    out.write(f"{summary.failed_total} line(s) of {summary.out_path} failed:\n")
    for reason, n, example in summary.failure_reasons():
        out.write(f"  {n:>6} {reason}: e.g. {one_line(example, 160)}\n")
    out.write(
        "fix them (the logs line, or the server) and rerun with --retry-failed to re-attempt them\n"
    )


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch_runner import run_batch

    with _make_client(args) as client:
        summary = run_batch(
            client,
            args.logs,
            args.output,
            concurrency=args.concurrency,
            top_k=args.top_k,
            progress=not args.no_progress,
            direction=args.direction,
            token_wise=args.token_wise,
            retry_failed=args.retry_failed,
        )
        info = _index_info_for_report(client) if args.report else None
    _print_batch_summary(summary, sys.stderr)
    if args.report:
        from .report import write_report

        for path in write_report(args.output, args.report, info):
            print(f"wrote {path}", file=sys.stderr)
    return EXIT_LINES_FAILED if summary.failures else 0


def _index_info_for_report(client: Client) -> IndexInfo | None:
    """The served index's summary (its corpus composition), or None with a warning."""
    try:
        return client.index_info()
    except APIError as exc:
        print(
            f"warning: corpus shares left out of the report: cannot read GET /v1/index ({exc})",
            file=sys.stderr,
        )
        return None


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    info: IndexInfo | None = None
    if args.index_info:
        with open(args.index_info, encoding="utf-8") as f:
            info = IndexInfo.model_validate_json(f.read())
    elif not args.offline:
        with _make_client(args) as client:
            info = _index_info_for_report(client)
    for path in write_report(args.results, args.output, info):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.record_id is None):
        raise ValueError("give an example id or --record-id (one of them)")
    with _make_client(args) as client:
        ex = (
            client.get_example(args.id)
            if args.id is not None
            else client.get_example_by_record_id(args.record_id)
        )
    if args.json:
        _print_json(ex, sys.stdout)
    else:
        where = f" ({ex.file}:{ex.line})" if ex.file else ""
        print(
            f"example {ex.example_id} · record {ex.record_id or '-'}{where} · source "
            f"{ex.source or '-'} · provider {ex.provider or '-'} · {ex.n_tokens} tokens · "
            f"{ex.content_hash}"
        )
        print(ex.text)
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        info = client.index_info()
    if args.json:
        _print_json(info, sys.stdout)
    else:
        for key, value in info.model_dump().items():
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            print(f"{key:<15} {shown}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        out = client.generate(
            args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature
        )
    if args.json:
        _print_json(out, sys.stdout)
    else:
        print(out.response)
    return 0


def _delegate(command: str, rest: list[str]) -> int:
    module_name, extra, _ = _DELEGATES[command]
    try:
        entry: Callable[[list[str]], int | None] = importlib.import_module(module_name).main
    except (ImportError, AttributeError) as exc:
        print(
            f"error: `tributary {command}` is not available ({exc}); "
            f"install the indexer/service extra: pip install 'tributary[{extra}]'",
            file=sys.stderr,
        )
        return 2
    try:
        rc = entry(rest)
    except SystemExit as exc:  # argparse --help / usage errors of the delegated CLI
        return _exit_code(exc)
    return int(rc) if rc is not None else 0


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 2


# --------------------------------------------------------------------------- parser


def _add_connection_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--base-url, --api-key, --timeout, --max-retries, -v: before or after the command.

    After the command they default to "not given" (SUPPRESS), so they never overwrite a value
    given before it."""

    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    parser.add_argument(
        "--base-url",
        default=default(None),
        help="API base URL (default $TRIBUTARY_BASE_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key", default=default(None), help="bearer API key (default $TRIBUTARY_API_KEY)"
    )
    parser.add_argument(
        "--timeout", type=float, default=default(None), help="read timeout in seconds (default 60)"
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=default(2),
        help="retries on transient errors (default 2)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log retries and progress details",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``tributary`` command."""
    p = argparse.ArgumentParser(
        prog="tributary", description="Which training examples made the model say this?"
    )
    _add_connection_options(p, top_level=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    directions = list(get_args(Direction))
    # the connection options are accepted after the command too
    # (`tributary attribute --base-url ...`)
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_options(common, top_level=False)

    a = sub.add_parser("attribute", help="attribute one generation", parents=[common])
    a.add_argument("--prompt", help="the prompt the model was given")
    a.add_argument("--response", help="the model's generation to explain")
    a.add_argument(
        "--messages-json",
        metavar="FILE",
        help="chat messages (JSON list; '-' = stdin), last one the assistant's reply",
    )
    a.add_argument("--top-k", type=int, default=10)
    a.add_argument("--direction", choices=directions, default="helpful")
    a.add_argument("--token-wise", action="store_true", help="per-token score decompositions")
    a.add_argument("--source", action="append", help="only examples from this source (repeatable)")
    a.add_argument(
        "--provider", action="append", help="only examples from this provider (repeatable)"
    )
    a.add_argument("--json", action="store_true", help="print the raw JSON response")
    a.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    a.set_defaults(func=cmd_attribute)

    b = sub.add_parser(
        "batch",
        help="attribute a JSONL file of logged generations (resumable)",
        parents=[common],
        description="Attribute every logged generation of a JSONL file into a results file, in "
        "input order. Resumable: rerun the same command after a kill. A line that cannot be "
        "attributed (not JSON, an unknown shape, an empty reply, a request the server refuses) is "
        "recorded as a failed line with the reason and the run goes on.",
        epilog="exit status: "
        + "; ".join(f"{code} = {text}" for code, text in BATCH_EXIT_CODES.items()),
    )
    b.add_argument(
        "logs", help="JSONL logs: {prompt, response}, {messages} or chat-completion logs"
    )
    b.add_argument(
        "-o", "--output", required=True, help="results JSONL (appended to; rerun to resume)"
    )
    b.add_argument("--concurrency", type=int, default=4)
    b.add_argument("--top-k", type=int, default=10)
    b.add_argument("--direction", choices=directions, default="helpful")
    b.add_argument("--token-wise", action="store_true")
    b.add_argument(
        "--report", metavar="PREFIX", help="also write PREFIX.csv, PREFIX.md and PREFIX.svg"
    )
    b.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-attempt the lines recorded as failed in the results file (each new result "
        "takes the failed line's place)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_batch)

    r = sub.add_parser(
        "report",
        help="data-valuation report of a results file (CSV, Markdown, SVG chart)",
        parents=[common],
    )
    r.add_argument("results")
    r.add_argument("-o", "--output", required=True, metavar="PREFIX")
    r.add_argument(
        "--index-info",
        metavar="FILE",
        help="the index's summary saved with `tributary index-info --json` (default: ask the "
        "server)",
    )
    r.add_argument("--offline", action="store_true", help="do not ask the server: no corpus shares")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser(
        "example", help="show one training example (by example id or --record-id)", parents=[common]
    )
    e.add_argument("id", type=int, nargs="?", help="the example id (the internal row number)")
    e.add_argument("--record-id", help="the record's own `id` in the corpus")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_example)

    i = sub.add_parser("index-info", help="summary of the served index", parents=[common])
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_index_info)

    g = sub.add_parser("generate", help="let the indexed model answer a prompt", parents=[common])
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)

    for name, (_, extra, what) in _DELEGATES.items():
        d = sub.add_parser(name, help=f"{what} (needs the [{extra}] extra)", add_help=False)
        d.add_argument("rest", nargs=argparse.REMAINDER)
        d.set_defaults(func=None)
    return p


_GLOBAL_VALUE_OPTIONS = {"--base-url", "--api-key", "--timeout", "--max-retries"}


def _find_delegate(argv: list[str]) -> tuple[str, list[str]] | None:
    """``[global options] index|serve REST...`` -> (command, REST), passed through verbatim."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_VALUE_OPTIONS:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return (arg, argv[i + 1 :]) if arg in _DELEGATES else None
    return None


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tributary`` console script; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    delegated = _find_delegate(args_list)
    if delegated is not None:
        return _delegate(*delegated)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help or a usage error (argparse printed the message)
        return _exit_code(exc)
    if args.func is None:
        return _delegate(args.command, list(args.rest))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except APIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RequestValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: invalid request: {_validation_message(exc)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:
        hint = " (rerun the same command to resume)" if args.command == "batch" else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
