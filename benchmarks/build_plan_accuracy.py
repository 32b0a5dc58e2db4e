r"""`tributary index plan` against the build it plans: time, disk, staging and peak RAM.

For each case, runs the plan and then the real build (both through the CLI, each in its own
process, same flags) and prints a Markdown table of estimate, actual and their ratio. The
build's peak RSS is the child's ``ru_maxrss`` (``os.wait4``); disk is the finished index,
staging what ``--keep-staging`` leaves next to it; time is the whole command's wall clock.

    .venv/bin/python -m benchmarks.build_plan_accuracy --case demo
    .venv/bin/python -m benchmarks.build_plan_accuracy --case tiny-generated \
        --examples 2000 --words 80
    .venv/bin/python -m benchmarks.build_plan_accuracy --case gpt2-small --examples 600
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer")]

from benchmarks.index_build import save_model, write_corpus  # noqa: E402


def _env() -> dict[str, str]:
    paths = [str(ROOT / "indexer"), str(ROOT / "service"), str(ROOT / "client"), str(ROOT)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), TOKENIZERS_PARALLELISM="false")


def _run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Like `_run`, with the child's own peak RSS (waited for with os.wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with {proc.returncode}")
    return wall, usage.ru_maxrss * 1024, out


def _size(path: Path, *, staging: bool) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and (("staging" in p.relative_to(path).parts) == staging):
            total += p.stat().st_size
    return total


def _case_inputs(args: argparse.Namespace, work: Path) -> tuple[Path, Path, str]:
    if args.case == "demo":
        return (
            ROOT / "demo" / "model",
            ROOT / "demo" / "corpus",
            "demo model (3.9M parameters), demo corpus",
        )
    size = "tiny" if args.case == "tiny-generated" else "gpt2-small"
    model, corpus = work / f"model-{size}", work / f"corpus-{args.examples}-{args.words}.jsonl"
    if not model.exists():
        save_model(size, model)
    write_corpus(corpus, args.examples, args.words)
    what = (
        "random-init GPT-2 of the demo's size"
        if size == "tiny"
        else "random-init GPT-2-small (124M)"
    )
    return model, corpus, f"{what}, {args.examples} generated documents of {args.words} words"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--case", choices=["demo", "tiny-generated", "gpt2-small"], default="demo")
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--plans",
        type=int,
        default=1,
        help="run the plan this many times (its spread between runs)",
    )
    ap.add_argument(
        "--flags", default="", help="extra build flags for both commands (e.g. '--num-threads 2')"
    )
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tributary-plan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model, corpus, what = _case_inputs(args, work)
    index = work / f"index-{args.case}"
    shutil.rmtree(index, ignore_errors=True)
    flags = args.flags.split()
    cli = [sys.executable, "-m", "tributary_indexer.cli", "--log-level", "WARNING"]
    started = datetime.now(timezone.utc)
    plans, plan_walls = [], []
    for _ in range(args.plans):
        plan_wall, _, plan_out = _run_measured(
            [*cli, "plan", "--model", str(model), "--corpus", str(corpus), "--json", *flags]
        )
        plans.append(json.loads(plan_out))
        plan_walls.append(plan_wall)
    plan = plans[0]
    build_wall, build_rss, build_out = _run_measured(
        [
            *cli,
            "build",
            "--model",
            str(model),
            "--corpus",
            str(corpus),
            "--out",
            str(index),
            "--keep-staging",
            *flags,
        ]
    )
    disk, staging = _size(index, staging=False), _size(index, staging=True)
    rows = [
        ("time (whole command, s)", plan["seconds"], build_wall, "{:.1f}"),
        ("index on disk (MB)", plan["disk_bytes"] / 1e6, disk / 1e6, "{:.1f}"),
        ("staging during the build (MB)", plan["staging_bytes"] / 1e6, staging / 1e6, "{:.1f}"),
        ("peak RAM (MiB)", plan["ram_bytes"] / 2**20, build_rss / 2**20, "{:.0f}"),
    ]
    print(
        f"# {args.case}: {what}; {plan['examples']} examples, {plan['tokens']} tokens, dim "
        f"{plan['dim']}"
    )
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, {platform.machine()} {os.cpu_count()} cores; the plan "
        f"itself took {plan_walls[0]:.1f} s (sample of {plan['sample_examples']} examples)"
    )
    print("| quantity | plan | actual | plan ÷ actual |\n|---|---|---|---|")
    for name, est, act, fmt in rows:
        print(
            f"| {name} | {fmt.format(est)} | {fmt.format(act)} | "
            f"{est / act if act else float('nan'):.2f} |"
        )
    print(
        "plan time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in plan["time_s"].items())
    )
    print("build: " + "; ".join(line.strip() for line in build_out.splitlines()[1:]))
    if len(plans) > 1:
        print(
            "repeated plans, estimated time (s): "
            + ", ".join(f"{p['seconds']:.1f}" for p in plans)
            + "; RAM (MiB): "
            + ", ".join(f"{p['ram_bytes'] / 2**20:.0f}" for p in plans)
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
