"""Kill a build right after each of its temp files appears, rerun it, and compare with an
uninterrupted build; prints a JSON report (run by ``test_crash_windows``).

One process imports the indexer once and forks a child per build (a build then costs its own
work, not a fresh interpreter's imports); the parent runs no torch work itself, so the children
start without an OpenMP pool to inherit. The kill is the real thing: the child SIGKILLs itself
through ``TRIBUTARY_CRASH_AFTER_TEMP`` right after its n-th temp file is complete.

    python -m tests.indexer.crash_window_driver MODEL CORPUS WORKDIR
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from pathlib import Path


def build_args(model: Path, corpus: Path, out: Path) -> list[str]:
    """The CLI arguments of the small build the crash-window checks run."""
    return [
        "--log-level",
        "ERROR",
        "build",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--rank-in",
        "4",
        "--rank-out",
        "4",
        "--shard-size",
        "12",
        "--no-progress",
        "--num-threads",
        "1",
        "--damping",
        "0.01",
    ]


def run_build(args: list[str], crash_after: int | None) -> int:
    """The exit status of one build in a forked child: its exit code, or ``-signal``."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            if crash_after is None:
                os.environ.pop("TRIBUTARY_CRASH_AFTER_TEMP", None)
            else:
                os.environ["TRIBUTARY_CRASH_AFTER_TEMP"] = str(crash_after)
            from tributary_indexer.cli import main

            code = main(args) or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def tree(out: Path) -> dict[str, str]:
    """sha256 of every file under ``out``, by relative path."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def main(argv: list[str]) -> int:
    model, corpus, work = (Path(a) for a in argv)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1790000000")
    os.environ["OMP_NUM_THREADS"] = "1"
    import tributary_indexer.build.builder  # noqa: F401  (imported once, inherited by every child)
    import tributary_indexer.cli  # noqa: F401

    reference = work / "reference"
    report: dict[str, object] = {
        "reference_rc": run_build(build_args(model, corpus, reference), None),
        "windows": [],
    }
    want = tree(reference)
    report["reference_files"] = sorted(want)
    windows: list[dict[str, object]] = []
    for n in range(1, 200):
        out = work / f"killed-{n}"
        rc = run_build(build_args(model, corpus, out), n)
        if rc == 0:  # fewer than n temp files: every window was tried
            break
        temps = sorted(str(p.relative_to(out)) for p in out.rglob(".*.tmp-*") if p.is_file())
        rerun = run_build(build_args(model, corpus, out), None)
        got = tree(out)
        windows.append(
            {
                "n": n,
                "rc": rc,
                "temps": temps,
                "rerun_rc": rerun,
                "missing": sorted(set(want) - set(got)),
                "extra": sorted(set(got) - set(want)),
                "differ": sorted(k for k in set(want) & set(got) if want[k] != got[k]),
            }
        )
    report["windows"] = windows
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
