"""``tributary serve --index DIR [--model PATH] [--host] [--port]``: run the service with
uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import get_args

from .blas_threads import quiet_blas_spin_waits
from .settings import Ranking, ServiceSettings

logger = logging.getLogger(__name__)


def _settings_problem(exc: Exception) -> str:
    """One line per wrong setting, named as its flag and its environment variable."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        name = ".".join(str(p) for p in err.get("loc", ()))
        flag = "--" + name.replace("_", "-")
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{flag} (TRIBUTARY_{name.upper()}): {msg}" if name else msg)
    return "invalid settings: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tributary serve",
        description="Serve attributions over an index (FastAPI + uvicorn). "
        "Every option can also be set as TRIBUTARY_<NAME>.",
    )
    parser.add_argument("--index", help="index directory (TRIBUTARY_INDEX)")
    parser.add_argument("--model", help="model directory; default: the manifest's model path")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--device")
    parser.add_argument(
        "--search-device",
        choices=["auto", "cpu", "gpu"],
        help="where the shards are searched: gpu (FAISS GPU, exact re-score there), cpu, or auto "
        "(the GPU when present) (TRIBUTARY_SEARCH_DEVICE)",
    )
    parser.add_argument(
        "--ranking",
        choices=list(get_args(Ranking)),
        help="rank examples this way instead of as the index's manifest says (TRIBUTARY_RANKING)",
    )
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        help="accepted bearer key (repeatable); visible to every user of this machine in `ps`: "
        "prefer TRIBUTARY_API_KEYS (comma-separated)",
    )
    parser.add_argument(
        "--admin-key",
        dest="admin_keys",
        action="append",
        help="bearer key of the admin routes: reload, removals (repeatable; none = admin routes "
        "off); visible in `ps` like --api-key: prefer TRIBUTARY_ADMIN_KEYS",
    )
    parser.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        help="allowed browser origin (repeatable)",
    )
    parser.add_argument(
        "--enable-generate", action="store_true", default=None, help="serve POST /v1/generate"
    )
    parser.add_argument(
        "--prompt-format",
        help="the prompt format the model was trained on, with {question} "
        "(default: inferred from the index; TRIBUTARY_PROMPT_FORMAT)",
    )
    parser.add_argument(
        "--no-verify-checksums", dest="verify_checksums", action="store_false", default=None
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("faiss.loader").setLevel(
        logging.WARNING
    )  # its failed CPU-variant probes are not errors
    if args.index is None and not os.environ.get("TRIBUTARY_INDEX"):
        print(
            "tributary serve: no index to serve; pass --index DIR (a directory written by "
            "`tributary index build --out DIR`) or set TRIBUTARY_INDEX=DIR",
            file=sys.stderr,
        )
        return 2
    if args.api_keys:
        logger.warning(
            "--api-key puts the key on the command line, where any user of this machine can read "
            "it (ps, /proc); set TRIBUTARY_API_KEYS in the environment instead"
        )
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "log_level"}
    try:
        settings = ServiceSettings(**overrides)
    except Exception as exc:  # pydantic ValidationError: say which setting is missing or wrong
        print(f"tributary serve: {_settings_problem(exc)}", file=sys.stderr)
        return 2
    quiet_blas_spin_waits()
    # numpy loads here (after the BLAS setting above): a GPU search without a GPU stops now
    from tributary_indexer.errors import SearchDeviceError
    from tributary_indexer.query.gpu_placement import resolve_search_device

    try:
        resolve_search_device(settings.search_device)
    except SearchDeviceError as exc:
        print(f"tributary serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from .app import create_app
    from .connection_limits import uvicorn_options

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level.lower(),
        access_log=False,
        **uvicorn_options(settings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
