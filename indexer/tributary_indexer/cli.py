"""``tributary index build|plan|add|remove|compact|verify`` — the indexer's command line.

Every :class:`~tributary_indexer.config.BuildConfig` field is a flag (``--rank-in 32``,
``--no-progress``); ``--config FILE`` (JSON or YAML) sets many at once and flags override it.
Run the same command under ``torchrun --nproc_per_node=N`` to build with N processes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import BuildConfig
from .errors import TributaryIndexError

logger = logging.getLogger(__name__)


def _optional_dim(text: str) -> int | None:
    """``--rapidgrad-k``: a positive integer, or ``off`` (also ``none``/``0``) to store LoGra
    vectors uncompressed."""
    if text.strip().lower() in ("off", "none", "0"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of dims or 'off', got {text!r}"
        ) from None


def _plain(text: str) -> str:
    """A docstring as plain text for ``--help``: one line, no reST roles or literal quotes."""
    text = re.sub(r":[a-z]+:`~?\.?([^`]+)`", r"\1", " ".join(text.split()))
    return text.replace("``", "")


def _field_docs() -> dict[str, str]:
    """The attribute docstrings of :class:`BuildConfig` (shown in ``--help``)."""
    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(BuildConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = _plain(nxt.value.value)
    return docs


def _add_config_flags(parser: argparse.ArgumentParser, skip: set[str]) -> None:
    docs = _field_docs()
    group = parser.add_argument_group("build configuration (defaults in brackets)")
    for f in dataclasses.fields(BuildConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default: Any = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        help_text = f"{docs.get(f.name, '')} [{default}]".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif isinstance(default, list):
            group.add_argument(
                flag, dest=f.name, nargs="+", default=argparse.SUPPRESS, help=help_text
            )
        elif f.name == "rapidgrad_k":
            group.add_argument(
                flag,
                dest=f.name,
                type=_optional_dim,
                default=argparse.SUPPRESS,
                metavar="{K,off}",
                help=help_text,
            )
        elif f.name == "autocast":
            group.add_argument(
                flag,
                dest=f.name,
                choices=["bf16", "fp16"],
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif f.name in ("num_threads", "flat_max_examples"):
            group.add_argument(
                flag, dest=f.name, type=int, default=argparse.SUPPRESS, help=help_text
            )
        else:
            group.add_argument(
                flag, dest=f.name, type=type(default), default=argparse.SUPPRESS, help=help_text
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tributary index", description="Build and maintain Tributary attribution indexes."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level [INFO]")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("build", "build an index (resumes a killed build of the same configuration)"),
        ("plan", "estimate disk, RAM and time of a build from a short measured sample"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--model", default=argparse.SUPPRESS, help="local Hugging Face causal LM directory"
        )
        p.add_argument(
            "--corpus",
            nargs="+",
            default=argparse.SUPPRESS,
            help="JSONL / Parquet files or directories",
        )
        p.add_argument("--out", required=name == "build", type=Path, help="index directory")
        p.add_argument(
            "--config", type=Path, help="JSON/YAML file of build settings (flags override it)"
        )
        if name == "build":
            p.add_argument(
                "--keep-staging",
                action="store_true",
                help="keep the raw staged vectors after the build",
            )
        else:
            p.add_argument(
                "--timed-batches",
                type=int,
                default=3,
                help="gradient batches timed after one warm-up batch, on the corpus's first "
                "examples [3]",
            )
            p.add_argument(
                "--json", action="store_true", help="print the plan and its breakdown as JSON"
            )
        _add_config_flags(p, skip={"model", "corpus"})
    p = sub.add_parser(
        "add", help="append a corpus as new shards with the frozen projector and Hessian"
    )
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--corpus", nargs="+", required=True)
    for flag in ("batch_tokens", "num_threads"):
        p.add_argument(
            "--" + flag.replace("_", "-"), dest=flag, type=int, default=argparse.SUPPRESS
        )
    p.add_argument("--device", default=argparse.SUPPRESS)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
    p.add_argument(
        "--skip-bad",
        dest="skip_bad",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
    )
    p = sub.add_parser(
        "remove",
        help="remove examples from every answer (tombstones; `compact` drops them from disk)",
        description="Tombstone the examples a selector matches: no answer, lookup or report "
        "returns them again, from the next request on (running servers included). Exactly one "
        "selector.",
    )
    p.add_argument("--index", required=True, type=Path, help="the index directory")
    chosen = p.add_mutually_exclusive_group(required=True)
    chosen.add_argument(
        "--record-id",
        dest="record_ids",
        nargs="+",
        metavar="ID",
        help="the corpus records' own ids",
    )
    chosen.add_argument("--provider", help="every example of this provider")
    chosen.add_argument("--source", help="every example of this source")
    chosen.add_argument(
        "--ids-file",
        type=Path,
        help="a file of record ids, one a line ('#' comments and blank lines skipped)",
    )
    p.add_argument(
        "--reason", help="why (kept in the tombstone log and, after compaction, in the manifest)"
    )
    p = sub.add_parser(
        "compact",
        help="rewrite shards and example store without the removed examples (crash-safe, "
        "resumable)",
        description="Rewrite the shards and the example store without the removed examples, "
        "renumbering the rest; the projector, Fisher and damping stay frozen. Kill it and rerun "
        "it: it resumes. A running server loads the result on POST /v1/admin/reload (or a "
        "restart).",
    )
    p.add_argument("--index", required=True, type=Path, help="the index directory")
    p = sub.add_parser("verify", help="check checksums, counts and manifest consistency")
    p.add_argument("index", type=Path)
    p.add_argument(
        "--no-checksums",
        action="store_true",
        help="skip sha256 of every file (fast); shard headers, sizes and counts are still checked",
    )
    p.add_argument(
        "--model",
        type=Path,
        help="also check that this model directory's config, weights and tokenizer "
        "are the ones the index was built from",
    )
    return parser


def resolve_config(args: argparse.Namespace) -> BuildConfig:
    """defaults < ``--config`` file < flags; paths made absolute so reruns from elsewhere match."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(BuildConfig.from_file(args.config).to_dict())
        values = {k: v for k, v in values.items() if v != getattr(BuildConfig(), k)}
    names = {f.name for f in dataclasses.fields(BuildConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    if values.get("model"):
        values["model"] = str(Path(values["model"]).resolve())
    if values.get("corpus"):
        values["corpus"] = [str(Path(c).resolve()) for c in values["corpus"]]
    return BuildConfig.from_dict(values)


def _cmd_build(args: argparse.Namespace) -> int:
    from .build.builder import IndexBuilder

    config = resolve_config(args)
    if not config.model or not config.corpus:
        raise ValueError("--model and --corpus are required (or set them in --config)")
    return _run_on_ranks(
        lambda ctx: IndexBuilder(config, args.out, ctx=ctx, keep_staging=args.keep_staging).build(),
        f"index written to {args.out}",
    )


def _run_on_ranks(work: Any, headline: str | Callable[[Any], str]) -> int:
    """Run ``work(ctx)`` in this process's rank (torchrun or single) and print rank 0's summary."""
    from .build.distributed import init_distributed, shutdown_distributed

    ctx = init_distributed()
    try:
        summary = work(ctx)
    finally:
        shutdown_distributed(ctx)
    if ctx.is_main:
        print(headline(summary) if callable(headline) else headline)
        for line in summary.lines():
            print("  " + line)
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    from .build.builder import IndexBuilder

    # IndexBuilder.add() takes the model, projector and score settings from the index itself;
    # only the corpus and the runtime knobs come from the command line.
    runtime = {
        k: v
        for k, v in vars(args).items()
        if k in {f.name for f in dataclasses.fields(BuildConfig)}
    }
    config = BuildConfig(**{**runtime, "corpus": [str(Path(c).resolve()) for c in args.corpus]})

    def headline(summary: Any) -> str:
        if summary.added == 0:
            return f"nothing added to {args.index}: every record of {args.corpus} is already in it"
        return f"added {summary.added} examples from {args.corpus} to {args.index}"

    return _run_on_ranks(lambda ctx: IndexBuilder(config, args.index, ctx=ctx).add(), headline)


def _record_ids_file(path: Path) -> list[str]:
    """Record ids from ``--ids-file``: one a line, blank lines and ``#`` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"cannot read --ids-file {path} ({exc}); fix: pass a UTF-8 text file of record ids"
        ) from exc
    ids = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise ValueError(f"--ids-file {path} holds no record ids; fix: one record id a line")
    return ids


def _cmd_remove(args: argparse.Namespace) -> int:
    from .build.layout import IndexPaths
    from .build.manifest import Manifest, utc_timestamp
    from .data.example_store import ExampleStore
    from .data.tombstones import add_removal, id_space_of, select_examples

    manifest = Manifest.load(args.index)
    record_ids = _record_ids_file(args.ids_file) if args.ids_file else args.record_ids
    with ExampleStore(IndexPaths(args.index).store) as store:
        selection = select_examples(
            store, record_ids=record_ids, provider=args.provider, source=args.source
        )
    for missing in selection.not_found[:20]:
        print(f"not in the index: record id {missing!r}")
    if not len(selection.ids):
        print(
            f"tributary index remove: nothing in {args.index} matches {selection.selector}; "
            "nothing removed",
            file=sys.stderr,
        )
        return 1
    state, added = add_removal(
        args.index,
        id_space_of(manifest),
        selection.ids,
        selection.selector,
        utc_timestamp(),
        reason=args.reason,
    )
    print(
        f"removed {added} examples ({len(selection.ids) - added} were already removed); "
        f"{len(state)} removed in all, generation {state.generation}. Run `tributary index compact "
        f"--index {args.index}` to drop them from disk."
    )
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from .build.compaction import compact_index

    summary = compact_index(args.index)
    for line in summary.lines():
        print(line)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .build.verification import verify_index, verify_model

    problems = verify_index(args.index, check_checksums=not args.no_checksums)
    if args.model is not None:
        problems += verify_model(args.index, args.model)
    if problems:
        print(f"{args.index}: {len(problems)} problem(s)")
        for problem in problems:
            print("  - " + problem)
        return 1
    print(f"{args.index}: OK")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .build.plan import estimate_build

    config = resolve_config(args)
    if not config.model or not config.corpus:
        raise ValueError("--model and --corpus are required (or set them in --config)")
    if args.timed_batches < 1:
        raise ValueError("--timed-batches must be at least 1")
    plan = estimate_build(config, timed_batches=args.timed_batches)
    if args.json:
        print(plan.to_json())
    else:
        for line in plan.lines():
            print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tributary index``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("faiss.loader").setLevel(
        logging.WARNING
    )  # its failed CPU-variant probes are not errors
    commands = {
        "build": _cmd_build,
        "add": _cmd_add,
        "verify": _cmd_verify,
        "plan": _cmd_plan,
        "remove": _cmd_remove,
        "compact": _cmd_compact,
    }
    t0 = time.perf_counter()
    try:
        return commands[args.command](args)
    except (TributaryIndexError, ValueError, FileNotFoundError) as exc:
        print(f"tributary index {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        logger.debug("%s took %.1f s", args.command, time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
