"""What an index build writes, as one JSON of file digests: the check that a refactor changes none.

Builds the demo corpus twice with this tree's CLI, once ``Flat`` (what ``auto`` picks there) and
once compressed (``IVF16,PQ64x4fs``, so the quantizer training and the exact re-rank vectors are
written too), each with small shards, then ``index add``s a second generated corpus to both.
Every file of both indexes is digested (SHA-256); ``manifest.json`` and ``build_config.json``
after dropping their timestamps (``created_at``, ``added_at``), which differ between any two
runs. Builds are deterministic, so two trees that write the same index give the same JSON; run
it on both and compare:

    git worktree add /tmp/before-tree REV        # the tree to compare against
    .venv/bin/python -m benchmarks.build_fingerprint --out /tmp/after.json
    (cd /tmp/before-tree && $OLDPWD/.venv/bin/python -m benchmarks.build_fingerprint \\
        --model $OLDPWD/demo/model --corpus $OLDPWD/demo/corpus --out /tmp/before.json)
    cmp /tmp/before.json /tmp/after.json

(copy this file into the older tree when it predates it).
The model, the corpus and the work directory (``--workdir``, emptied first) are the same
absolute paths for both trees, because the manifest and the example store record them. About
45 s on two cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIMESTAMPS = frozenset({"created_at", "added_at"})
FACTORIES = {"flat": "auto", "ivf": "IVF16,PQ64x4fs"}


def _without_timestamps(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timestamps(v) for k, v in value.items() if k not in TIMESTAMPS}
    if isinstance(value, list):
        return [_without_timestamps(v) for v in value]
    return value


def digest_tree(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (JSON metadata canonicalised), by relative path."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name in ("manifest.json", "build_config.json"):
            data = json.dumps(_without_timestamps(json.loads(data)), sort_keys=True).encode()
        out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def _cli(*args: str) -> None:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    paths = [str(ROOT / p) for p in ("indexer", "service", "client")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "tributary_indexer.cli", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def fingerprint(model: Path, corpus: Path, work: Path, shard_size: int = 500) -> dict[str, Any]:
    """Build, add and digest both indexes under ``work``."""
    extra = work / "extra"
    subprocess.run(
        [sys.executable, "-m", "demo.tools.corpus_generator", "--out", str(extra)]
        + ["--records", "600", "--seed", "5", "--quiet"],
        cwd=ROOT,
        check=True,
    )
    files: dict[str, dict[str, str]] = {}
    for name, factory in FACTORIES.items():
        index = work / name
        _cli(
            "build",
            *("--model", str(model), "--corpus", str(corpus), "--out", str(index)),
            *_build_args(factory, shard_size),
        )
        _cli("add", "--index", str(index), "--corpus", str(extra), "--no-progress")
        files[name] = digest_tree(index)
    return {"model": str(model), "corpus": str(corpus), "factories": FACTORIES, "files": files}


def _build_args(factory: str, shard_size: int) -> list[str]:
    return ["--index-factory", factory, "--shard-size", str(shard_size), "--no-progress"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    parser.add_argument("--corpus", type=Path, default=ROOT / "demo" / "corpus")
    parser.add_argument("--out", type=Path, required=True, help="the JSON of digests")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "tributary-fingerprint",
        help="where the indexes are built (emptied first, removed after)",
    )
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        result = fingerprint(args.model.resolve(), args.corpus.resolve(), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    n = sum(len(f) for f in result["files"].values())
    print(f"{n} files digested into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
