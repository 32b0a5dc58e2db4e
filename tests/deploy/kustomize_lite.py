"""A small, exact renderer for the subset of kustomize that ``deploy/`` uses.

kustomize is a Go binary that PyPI does not ship, so the tests render the overlays themselves:
``resources`` (files and directories, recursively), ``images`` (newName/newTag) and ``patches``
given as strategic-merge patch files. Anything else in a kustomization, or a patch construct
whose strategic-merge result this module cannot reproduce exactly, raises
:class:`UnsupportedKustomization` instead of rendering something kustomize would not. When
``kubectl`` is installed, ``test_kubernetes.py`` also checks that ``kubectl kustomize`` renders
the same objects.

Strategic merge, as kustomize applies it: maps merge key by key, ``null`` deletes a key, lists
with a merge key (containers and env by ``name``, volumeMounts by ``mountPath``, ...) merge
item by item with the patch's items first, then the untouched items in their original order;
other lists are replaced.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "images", "patches"}

# Lists merged item by item, by this key (Kubernetes' patchMergeKey for these fields).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
# Lists whose strategic merge depends on more than one key or on the object kind: refused.
UNSUPPORTED_LISTS = {"ports", "envFrom", "topologySpreadConstraints", "args", "command"}


class UnsupportedKustomization(ValueError):
    """The kustomization uses something this renderer cannot reproduce exactly."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def resource_id(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build directory`` outputs (in resource order, not kustomize's)."""
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    if unknown:
        raise UnsupportedKustomization(
            f"{directory}: fields {sorted(unknown)} are not rendered by this module"
        )
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects.extend(render(path) if path.is_dir() else load_documents(path))
    ids = [resource_id(o) for o in objects]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise UnsupportedKustomization(
            f"{directory}: resources defined twice (kustomize refuses): {sorted(duplicates)}"
        )
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise UnsupportedKustomization(
                f"{directory}: only `patches: - path: FILE` is rendered, got {patch}"
            )
        for doc in load_documents(directory / patch["path"]):
            targets = [
                o
                for o in objects
                if resource_id(o) == resource_id(doc) and o["apiVersion"] == doc["apiVersion"]
            ]
            if len(targets) != 1:
                raise UnsupportedKustomization(
                    f"{directory}/{patch['path']}: patch target {resource_id(doc)} not found"
                )
            strategic_merge(targets[0], doc)
    for image in kustomization.get("images", []):
        if not set(image) <= {"name", "newName", "newTag"}:
            raise UnsupportedKustomization(f"{directory}: image transformer {image} not rendered")
        for obj in objects:
            _set_images(obj, image)
    return objects


def strategic_merge(base: dict[str, Any], patch: dict[str, Any], field: str = "") -> None:
    """Apply ``patch`` to ``base`` in place (see the module docstring)."""
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise UnsupportedKustomization(
                f"{field}.{key}: strategic-merge directives are not rendered"
            )
        if value is None:
            base.pop(key, None)
            continue
        current = base.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            strategic_merge(current, value, f"{field}.{key}")
        elif isinstance(value, list) and isinstance(current, list) and key in UNSUPPORTED_LISTS:
            raise UnsupportedKustomization(
                f"{field}.{key}: patching this list is not rendered exactly here"
            )
        elif isinstance(value, list) and isinstance(current, list) and key in MERGE_KEYS:
            merge_key = MERGE_KEYS[key]
            by_key = {item[merge_key]: item for item in current}
            merged = []
            for item in value:
                if item[merge_key] in by_key:
                    strategic_merge(
                        by_key[item[merge_key]], item, f"{field}.{key}[{item[merge_key]}]"
                    )
                    merged.append(by_key[item[merge_key]])
                else:
                    merged.append(copy.deepcopy(item))
            patched = {item[merge_key] for item in value}
            base[key] = merged + [item for item in current if item[merge_key] not in patched]
        else:
            base[key] = copy.deepcopy(value)


def _split_image(image: str) -> tuple[str, str]:
    """``name[:tag]`` → (name, tag); a registry port (``host:5000/x``) is not a tag."""
    if "@" in image:
        raise UnsupportedKustomization(f"image {image}: digests are not rendered")
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, ""
    return name, tag


def _set_images(node: Any, rule: dict[str, str], parent: str = "") -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _set_images(value, rule, key)
    elif isinstance(node, list):
        for item in node:
            if (
                parent in ("containers", "initContainers")
                and isinstance(item, dict)
                and isinstance(item.get("image"), str)
            ):
                name, tag = _split_image(item["image"])
                if name == rule["name"]:
                    new_name = rule.get("newName", name)
                    new_tag = rule.get("newTag", tag)
                    item["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
            _set_images(item, rule, parent)
