"""deploy/: every rendered manifest validates against the Kubernetes JSON schemas, and the overlays
carry what the service and the indexing job need (probes, resources, GPUs, read-only index,
non-root, a torchrun command the real parsers accept, settings the service knows).

Rendering: tests/deploy/kustomize_lite.py (exact for what deploy/ uses); when kubectl is
installed, ``kubectl kustomize`` must render the same objects. Schemas: kubernetes-validate
(bundled per Kubernetes version, strict: unknown fields fail), no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kustomize_lite import load_documents, render, resource_id

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVICE_OVERLAYS = {"cpu": DEPLOY / "overlays" / "cpu", "gpu": DEPLOY / "overlays" / "gpu"}
INDEXING_OVERLAYS = {
    "cpu": DEPLOY / "indexing" / "overlays" / "cpu",
    "gpu": DEPLOY / "indexing" / "overlays" / "gpu",
}
ALL_DIRS = [
    DEPLOY / "base",
    DEPLOY / "indexing" / "base",
    *SERVICE_OVERLAYS.values(),
    *INDEXING_OVERLAYS.values(),
]
# Oldest Kubernetes the manifests claim (deploy/README.md) and the newest schemas bundled.
K8S_VERSIONS = ["1.29", "latest"]
IMAGE = "ghcr.io/tributary/tributary"
UID = 10001
STARTUP_BUDGET_S = 20 * 60  # a large index: sha256 of every file, then the model


def _version() -> str:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: mypy's dependency, in the [dev] extra
        import tomli as tomllib  # type: ignore[no-redef]

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _quantity(value: str | int) -> float:
    """Kubernetes quantity → float (cores or bytes)."""
    units = {
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
    }
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"bad quantity {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {f"service-{k}": render(d) for k, d in SERVICE_OVERLAYS.items()}
    out.update({f"indexing-{k}": render(d) for k, d in INDEXING_OVERLAYS.items()})
    return out


# ------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("directory", ALL_DIRS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kubectl_kustomize_renders_the_same_objects(directory):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; the Python renderer alone is used")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    theirs = {resource_id(o): o for o in yaml.safe_load_all(proc.stdout) if o}
    ours = {resource_id(o): o for o in render(directory)}
    assert sorted(ours) == sorted(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], f"{directory}: {key} renders differently from kubectl kustomize"


def test_every_manifest_validates_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    seen: set[str] = set()
    for name, objects in rendered.items():
        for obj in objects:
            key = json.dumps(obj, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            for version in K8S_VERSIONS:
                version = latest_version() if version == "latest" else version
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path)
                    pytest.fail(
                        f"{name}: {resource_id(obj)} invalid for Kubernetes {version} at {path}: "
                        f"{exc.message}"
                    )
    assert len(seen) >= 12


def test_the_pytorchjob_pod_template_validates_and_runs_the_same_build():
    """The Kubeflow variant: a CRD (no schema here), so its pod template is validated as a
    core/v1 PodTemplate and its build arguments are compared with the Indexed Job's."""
    import kubernetes_validate

    (job,) = load_documents(DEPLOY / "optional" / "pytorchjob.yaml")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] >= 1
    indexed = _one(render(INDEXING_OVERLAYS["gpu"]), "Job")
    indexed_args = _pod_spec(indexed)["containers"][0]["args"]
    for role, spec in specs.items():
        template = spec["template"]
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": role.lower()},
                "template": template,
            },
            K8S_VERSIONS[0],
            strict=True,
        )
        (container,) = template["spec"]["containers"]
        assert container["name"] == "pytorch", (
            "the training operator configures the container named pytorch"
        )
        args = container["args"]
        assert args[0] == "torchrun"
        assert args[args.index("-m") :] == indexed_args[indexed_args.index("-m") :]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert int(job["spec"]["nprocPerNode"]) == gpus
        assert container["image"] == f"{IMAGE}:{_version()}-gpu"


# ------------------------------------------------------------------------------- the service


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_service_deployment_probes_resources_and_security(rendered, flavor):
    objects = rendered[f"service-{flavor}"]
    deployment = _one(objects, "Deployment")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    pod = _pod_spec(deployment)
    (container,) = pod["containers"]
    assert container["args"] == ["serve"]
    assert container["image"] == f"{IMAGE}:{_version()}{'-gpu' if flavor == 'gpu' else ''}"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}

    startup, liveness, readiness = (
        container["startupProbe"],
        container["livenessProbe"],
        container["readinessProbe"],
    )
    assert startup["httpGet"] == {"path": "/healthz", "port": "http"}
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http"}
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET_S

    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind])
    if flavor == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] >= 1
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert "nvidia.com/gpu" not in json.dumps(objects)

    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["securityContext"]["runAsUser"] == UID
    )
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert (
        security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    )
    assert security["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_service_mounts_the_index_read_only_and_writes_only_to_its_own_volumes(rendered, flavor):
    deployment = _one(rendered[f"service-{flavor}"], "Deployment")
    pod = _pod_spec(deployment)
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    data = mounts["/data"]
    assert (
        data["readOnly"] is True
        and volumes[data["name"]]["persistentVolumeClaim"]["readOnly"] is True
    )
    for path in writable:  # a read-only root filesystem: only emptyDirs take writes
        assert "emptyDir" in volumes[mounts[path]["name"]], path
    assert "/tmp" in writable

    config = _one(rendered[f"service-{flavor}"], "ConfigMap")["data"]
    assert config["TRIBUTARY_INDEX"].startswith("/data/") and config["TRIBUTARY_MODEL"].startswith(
        "/data/"
    )
    assert config["TRIBUTARY_STATE_DIR"] in writable
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [
        _one(rendered[f"service-{flavor}"], "ConfigMap")["metadata"]["name"]
    ]


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_service_settings_come_from_the_configmap_and_the_api_keys_from_a_secret(
    rendered, flavor, monkeypatch
):
    from tributary_service.settings import ServiceSettings

    objects = rendered[f"service-{flavor}"]
    assert not _by_kind(objects, "Secret"), (
        "API keys are never committed: create the Secret (deploy/README.md)"
    )
    (container,) = _pod_spec(_one(objects, "Deployment"))["containers"]
    keys = _env(container)["TRIBUTARY_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert keys["name"] and keys["key"] and not keys.get("optional")
    for name, entry in _env(container).items():
        assert name.startswith("TRIBUTARY_") and "value" not in entry, (
            f"{name}: settings belong in the ConfigMap"
        )

    config = _one(objects, "ConfigMap")["data"]
    fields = set(ServiceSettings.model_fields)
    for key in config:
        assert key.startswith("TRIBUTARY_") and key[len("TRIBUTARY_") :].lower() in fields, (
            f"unknown setting {key}"
        )
    for key in list(os.environ):
        if key.startswith("TRIBUTARY_"):
            monkeypatch.delenv(key)
    for key, value in {**config, "TRIBUTARY_API_KEYS": "k1,k2"}.items():
        monkeypatch.setenv(key, value)
    settings = ServiceSettings()  # type: ignore[call-arg]  # every value parses (index from the env)
    assert settings.api_keys == ["k1", "k2"]
    assert settings.device == ("cuda" if flavor == "gpu" else "cpu")
    assert settings.num_threads is not None and settings.num_threads <= _quantity(
        container["resources"]["limits"]["cpu"]
    )


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_service_pdb_and_hpa_select_the_deployment(rendered, flavor):
    objects = rendered[f"service-{flavor}"]
    deployment = _one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    service = _one(objects, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]

    pdb = _one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = _one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"], (
        "a drain must leave a replica serving"
    )
    assert any(
        m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]
    )

    pvc = _one(objects, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert (
        _pod_spec(deployment)["volumes"][0]["persistentVolumeClaim"]["claimName"]
        == pvc["metadata"]["name"]
    )


# ------------------------------------------------------------------------------- the indexing job


def _job_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _pod_spec(_one(objects, "Job"))["containers"]
    return container


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (undefined references stay as they are, as in Kubernetes)."""
    return re.sub(
        r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value
    )


def _env_values(
    container: dict[str, Any], job_index: int = 0, namespace: str = "tributary"
) -> dict[str, str]:
    """The container's env as a pod of the Job sees it (fieldRefs resolved)."""
    values: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            values[entry["name"]] = _expand(entry["value"], values)
        else:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            values[entry["name"]] = {
                "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(job_index),
                "metadata.namespace": namespace,
            }[path]
    return values


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_indexing_job_is_an_indexed_job_with_torchrun_rendezvous_at_pod_zero(rendered, flavor):
    objects = rendered[f"indexing-{flavor}"]
    job = _one(objects, "Job")
    spec, pod = job["spec"], _pod_spec(job)
    container = _job_container(objects)
    env = _env_values(container)
    nnodes = int(env["NNODES"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nnodes >= 1
    assert spec["backoffLimit"] > 0, "a failed pod is replaced and the build resumes"
    assert pod["restartPolicy"] == "Never"

    # the rendezvous host is pod 0, reachable through the headless Service
    service = _one(objects, "Service")
    assert (
        service["spec"]["clusterIP"] == "None"
        and service["spec"]["publishNotReadyAddresses"] is True
    )
    assert (
        service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["subdomain"] == service["metadata"]["name"]
    namespace = job["metadata"]["namespace"]
    assert (
        env["RDZV_HOST"] == f"{job['metadata']['name']}-0."
        f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    )
    assert (
        [p["port"] for p in service["spec"]["ports"]]
        == [p["containerPort"] for p in container["ports"]]
        == [29500]
    )

    args = container["args"]
    assert args[0] == "torchrun", "the image's entrypoint runs torchrun as given"
    assert "--rdzv_backend=c10d" in args and "--node_rank=$(JOB_COMPLETION_INDEX)" in args
    assert "--nnodes=$(NNODES)" in args and "--nproc_per_node=$(NPROC_PER_NODE)" in args
    for arg in args:  # every $(VAR) is defined in the container's env
        for name in re.findall(r"\$\(([^)]+)\)", arg):
            assert name in env, f"{arg}: $({name}) is not in the container's env"
    for entry in container["env"]:  # and env values only refer to variables defined before them
        defined = [e["name"] for e in container["env"]]
        for name in re.findall(r"\$\(([^)]+)\)", entry.get("value", "")):
            assert name in defined[: defined.index(entry["name"])], (
                f"{entry['name']} uses $({name}) before it is defined"
            )


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_indexing_command_parses_with_torchrun_and_the_indexer(rendered, flavor):
    from torch.distributed.elastic.rendezvous.utils import _parse_rendezvous_config
    from torch.distributed.run import get_args_parser, parse_min_max_nnodes
    from tributary_indexer.cli import build_parser
    from tributary_indexer.config import BuildConfig

    objects = rendered[f"indexing-{flavor}"]
    container = _job_container(objects)
    for job_index in range(int(_env_values(container)["NNODES"])):
        env = _env_values(container, job_index)
        args = [_expand(a, env) for a in container["args"][1:]]
        torchrun = get_args_parser().parse_args(args)
        assert torchrun.module and torchrun.training_script == "tributary_indexer.cli"
        assert parse_min_max_nnodes(torchrun.nnodes) == (int(env["NNODES"]),) * 2
        assert (
            int(torchrun.nproc_per_node) == int(env["NPROC_PER_NODE"])
            and torchrun.node_rank == job_index
        )
        assert torchrun.rdzv_endpoint == f"{env['RDZV_HOST']}:29500"
        assert int(_parse_rendezvous_config(torchrun.rdzv_conf)["join_timeout"]) >= 600
        assert torchrun.max_restarts > 0

    indexer = build_parser().parse_args(torchrun.training_script_args)
    assert indexer.command == "build"
    # --config is the mounted ConfigMap's build.json, which is a valid BuildConfig
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_dir = str(Path(str(indexer.config)).parent)
    volume = {v["name"]: v for v in _pod_spec(_one(objects, "Job"))["volumes"]}[
        mounts[config_dir]["name"]
    ]
    configmap = next(
        c
        for c in _by_kind(objects, "ConfigMap")
        if c["metadata"]["name"] == volume["configMap"]["name"]
    )
    config = BuildConfig.from_dict(
        json.loads(configmap["data"][indexer.config.name])
    )  # valid fields and values
    assert config.model.startswith("/data/") and all(c.startswith("/data/") for c in config.corpus)
    assert config.progress is False, "no progress bars in pod logs"
    assert str(indexer.out).startswith("/data/")

    # the index lands where the service reads it, built from the model the service loads
    service_config = _one(rendered[f"service-{flavor}"], "ConfigMap")["data"]
    assert service_config["TRIBUTARY_INDEX"] == str(indexer.out)
    assert service_config["TRIBUTARY_MODEL"] == config.model


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_indexing_job_resources_gpus_storage_and_security(rendered, flavor):
    objects = rendered[f"indexing-{flavor}"]
    job = _one(objects, "Job")
    pod = _pod_spec(job)
    container = _job_container(objects)
    env = _env_values(container)
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind])
    nproc = int(env["NPROC_PER_NODE"])
    assert nproc * int(env["OMP_NUM_THREADS"]) <= _quantity(resources["limits"]["cpu"]), (
        "threads oversubscribe the CPU limit"
    )
    if flavor == "gpu":
        assert (
            resources["limits"]["nvidia.com/gpu"]
            == resources["requests"]["nvidia.com/gpu"]
            == nproc
        )
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert container["image"] == f"{IMAGE}:{_version()}-gpu"
    else:
        assert "nvidia.com/gpu" not in json.dumps(objects) and nproc == 1
        assert container["image"] == f"{IMAGE}:{_version()}"

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    data = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]
    assert not data.get("readOnly") and not mounts["/data"].get("readOnly"), (
        "the job writes shards to shared storage"
    )
    pvc = next(
        p
        for p in _by_kind(objects, "PersistentVolumeClaim")
        if p["metadata"]["name"] == data["claimName"]
    )
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]

    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["securityContext"]["runAsUser"] == UID
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_and_indexing_share_namespace_and_storage(rendered):
    for flavor in ("cpu", "gpu"):
        service, indexing = rendered[f"service-{flavor}"], rendered[f"indexing-{flavor}"]
        shared = {
            resource_id(o): o
            for o in service
            if o["kind"] in ("Namespace", "PersistentVolumeClaim")
        }
        assert shared == {
            resource_id(o): o
            for o in indexing
            if o["kind"] in ("Namespace", "PersistentVolumeClaim")
        }
        namespaces = {
            o["metadata"].get("namespace") for o in service + indexing if o["kind"] != "Namespace"
        }
        assert namespaces == {_one(service, "Namespace")["metadata"]["name"]}
