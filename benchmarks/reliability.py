"""Reliability under hostile input, many tenants and slow clients, against a real
``tributary serve``.

Everything runs against a live server on 127.0.0.1 (the tiny fixture model and a 60-example
index, or ``--index``/``--model``), auth off and auth on (two keys):

* **schemathesis** (``--checks all``, phases coverage, fuzzing and stateful, the prose rules
  taught by :mod:`benchmarks.schemathesis_hooks`): cases generated, failures per check, 5xx;
* the **bad-input list** (:data:`PROBES`): each probe's status is one it must be, never a 5xx,
  always the error envelope and a well-formed request id;
* the **load run**: attributions at a fixed concurrency, status counts, the server's RSS before
  and after;
* ``/healthz`` **latency under floods**: the worst of a 20 ms poll while 1 MB requests, and
  then large batch files, are being sent.

The fast part runs in ``make test`` (``tests/reliability/``); the long run is this script:

    .venv/bin/python benchmarks/reliability.py   # the recorded run (slow on 2 cores)
    .venv/bin/python benchmarks/reliability.py --cases 50 --load 300 --concurrency 16   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer"), str(ROOT / "service"), str(ROOT / "client")]


from benchmarks.reliability_load import (  # noqa: E402
    LoadRun,
    flood_batches,
    flood_large_requests,
    healthz_worst_ms,
    run_load,
)
from benchmarks.reliability_probes import PROBES, Probe, ProbeResult, run_probes  # noqa: E402
from benchmarks.reliability_server import (  # noqa: E402
    KEYS,
    QA,
    REQUEST_ID,
    Server,
    build_fixture_index,
    run_env,
    serve,
    server_errors,
)

__all__ = [
    "KEYS",
    "PROBES",
    "QA",
    "REQUEST_ID",
    "LoadRun",
    "Probe",
    "ProbeResult",
    "SchemaRun",
    "Server",
    "build_fixture_index",
    "flood_batches",
    "flood_large_requests",
    "healthz_worst_ms",
    "run_load",
    "run_probes",
    "run_schemathesis",
    "serve",
    "server_errors",
]


# --------------------------------------------------------------------------- schemathesis


@dataclass
class SchemaRun:
    auth: bool
    cases: int
    failures: dict[str, int]
    errors: int
    exit_code: int
    seconds: float


def run_schemathesis(
    base: str,
    key: str | None,
    max_examples: int,
    seed: int = 1,
    workers: int = 2,
    phases: str = "coverage,fuzzing,stateful",
    max_time: float | None = None,
    timeout: float = 3600,
) -> tuple[SchemaRun, str]:
    """``schemathesis run --checks all`` against the live server; the parsed summary and its
    output."""
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe) if exe.exists() else "schemathesis",
        "--config-file",
        str(ROOT / "benchmarks" / "schemathesis.toml"),
        "run",
        base + "/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--phases",
        phases,
        "--no-shrink",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "too_slow,filter_too_much",
    ]
    if max_time is not None:
        cmd += ["--max-time", str(int(max_time))]
    if key is not None:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=run_env(SCHEMATHESIS_HOOKS="benchmarks.schemathesis_hooks", NO_COLOR="1"),
    )
    out = proc.stdout + proc.stderr
    cases = sum(int(n) for n in re.findall(r"(\d+) generated", out))
    failures = {name.strip(): int(n) for name, n in re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", out)}
    errors = sum(int(n) for n in re.findall(r"🚫 [^:\n]+: (\d+)", out))
    return SchemaRun(
        key is not None, cases, failures, errors, proc.returncode, time.perf_counter() - t0
    ), out


# --------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--index", type=Path, help="index directory (default: build the fixture index)"
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument(
        "--cases", type=int, default=300, help="schemathesis --max-examples per operation and phase"
    )
    parser.add_argument(
        "--schema-max-time", type=float, default=900, help="seconds per schemathesis run, at most"
    )
    parser.add_argument("--load", type=int, default=5000, help="requests of the load run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--floods", type=int, default=40, help="1 MB requests in the large-request flood"
    )
    parser.add_argument(
        "--batch-lines",
        type=int,
        default=20_000,
        help="lines per batch file in the batch flood (4 files)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["probes", "schema", "load", "floods"],
        help="parts not to run",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "reliability.json"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tributary-reliability-"))
    try:
        if args.index is None:
            index, model = build_fixture_index(work / "fixture")
        else:
            index, model = (
                args.index,
                args.model
                or Path(json.loads((args.index / "manifest.json").read_text())["model"]["path"]),
            )
        report: dict[str, Any] = {
            "command": " ".join(
                ["benchmarks/reliability.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "runs": [],
        }
        for keys in ((), KEYS):
            key = keys[0] if keys else None
            label = "auth on" if keys else "auth off"
            run: dict[str, Any] = {"auth": label}
            with serve(index, model, work / f"state-{len(keys)}", keys) as server:
                probes = run_probes(server.base, key) if "probes" not in args.skip else []
                run["probes"] = len(probes)
                run["probe_problems"] = [asdict(p) for p in probes if p.problem]
                print(
                    f"[{label}] bad-input probes: {len(probes)}, problems: "
                    f"{len(run['probe_problems'])}",
                    flush=True,
                )
                if "schema" in args.skip:
                    schema, out = SchemaRun(bool(keys), 0, {}, 0, 0, 0.0), ""
                else:
                    schema, out = run_schemathesis(
                        server.base, key, args.cases, max_time=args.schema_max_time
                    )
                (work / f"schemathesis-{len(keys)}.txt").write_text(out)
                run["schemathesis"] = asdict(schema)
                print(
                    f"[{label}] schemathesis: {schema.cases} cases, failures {schema.failures}, "
                    f"errors {schema.errors} ({schema.seconds:.0f} s)",
                    flush=True,
                )
                if schema.failures or schema.errors:
                    print(out[-6000:], flush=True)
                load = run_load(
                    server, key, args.load if "load" not in args.skip else 0, args.concurrency
                )
                run["load"] = asdict(load)
                print(
                    f"[{label}] load: {load.requests} requests at {load.concurrency}: "
                    f"{load.statuses} in {load.seconds:.0f} s, RSS {load.rss_before_mib:.0f} -> "
                    f"{load.rss_after_mib:.0f} MiB",
                    flush=True,
                )
                if "floods" in args.skip:
                    run["server_5xx"] = server_errors(server.base)
                    report["runs"].append(run)
                    continue
                large: Counter[int] = Counter()
                worst, polls = healthz_worst_ms(
                    server.base,
                    lambda large=large, key=key: large.update(
                        flood_large_requests(server.base, key, args.floods)
                    ),
                )
                run["healthz_during_1mb_flood"] = {
                    "worst_ms": worst,
                    "polls": polls,
                    "statuses": dict(large),
                }
                print(
                    f"[{label}] /healthz during {args.floods} 1 MB requests: worst {worst:.1f} ms "
                    f"over {polls} polls ({dict(large)})",
                    flush=True,
                )
                ids: list[str] = []
                worst, polls = healthz_worst_ms(
                    server.base,
                    lambda ids=ids, key=key: ids.extend(
                        flood_batches(server.base, key, 4, args.batch_lines)
                    ),
                )
                run["healthz_during_batch_flood"] = {
                    "worst_ms": worst,
                    "polls": polls,
                    "batches": len(ids),
                    "lines": args.batch_lines,
                }
                print(
                    f"[{label}] /healthz during 4 batch files of {args.batch_lines} lines: worst "
                    f"{worst:.1f} ms over {polls} polls",
                    flush=True,
                )
                headers = {"authorization": f"Bearer {key}"} if key else {}
                for batch_id in ids:
                    httpx.delete(
                        f"{server.base}/v1/batches/{batch_id}", headers=headers, timeout=60
                    )
                run["server_5xx"] = server_errors(server.base)
                run["rss_end_mib"] = server.rss_mib()
                print(f"[{label}] 5xx counted by the server: {run['server_5xx']}", flush=True)
            report["runs"].append(run)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        bad = any(
            r["probe_problems"]
            or r["server_5xx"]
            or r["schemathesis"]["failures"]
            or r["schemathesis"]["errors"]
            for r in report["runs"]
        )
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
