"""A small kustomize: builds the kustomizations under ``deploy/`` as ``kubectl kustomize`` does.

Only the subset these manifests use is implemented, and anything outside it is an error rather
than silently ignored:

- ``resources``: YAML files inside the kustomization's folder, and folders holding a kustomization;
- ``patches`` (from ``path`` or inline ``patch``, with an optional ``target``): strategic merge on
  maps (maps merge, ``null`` deletes a key, ``$patch: delete`` removes the whole object; a list in a
  strategic-merge patch is refused, because its merge depends on per-field keys: use JSON 6902),
  and JSON 6902 (``add``, ``remove``, ``replace``, ``test``);
- ``namespace``; ``labels`` (``metadata.labels`` only: no selectors, no templates);
- ``images`` (``newName``, ``newTag``, ``digest``), applied to every ``containers`` and
  ``initContainers`` list at any depth, custom resources included, as kustomize does.

Transformers run in kustomize's order (patches, namespace, labels, images) and the output is in
kustomize's "legacy" order. ``python deploy/kustomize.py deploy/overlays/gpu`` prints the stream.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "build", "dump", "object_id"]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_KNOWN_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
_TARGET_FIELDS = {"group", "version", "kind", "name", "namespace"}

# kustomize's legacy output order (api/resource: orderFirst / orderLast).
_ORDER_FIRST = (
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
)
_ORDER_LAST = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")

# Kinds without a namespace (the ones a kustomization here could plausibly contain).
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "StorageClass",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "PriorityClass",
        "IngressClass",
        "RuntimeClass",
        "APIService",
        "CSIDriver",
        "CSINode",
        "VolumeAttachment",
        "CertificateSigningRequest",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
)


class KustomizeError(ValueError):
    """A kustomization this renderer cannot build (or that kustomize itself would refuse)."""


def build(path: str | Path) -> list[dict[str, Any]]:
    """The objects of the kustomization in ``path`` (a folder), transformed and in legacy order."""
    objects = _build(Path(path).resolve(), ())
    for obj in objects:
        # kustomize keeps its bookkeeping in annotations and drops the map when it ends up empty.
        if obj.get("metadata", {}).get("annotations") == {}:
            del obj["metadata"]["annotations"]
    return sorted(objects, key=_legacy_key)


def dump(objects: list[dict[str, Any]]) -> str:
    """A YAML stream, keys sorted as ``kubectl kustomize`` prints them."""
    return yaml.safe_dump_all(objects, sort_keys=True, default_flow_style=False)


def object_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what kustomize uses to tell objects apart."""
    group, _ = _group_version(obj)
    meta = obj.get("metadata") or {}
    return group, str(obj.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name", ""))


# --- building -------------------------------------------------------------------------------


def _build(root: Path, seen: tuple[Path, ...]) -> list[dict[str, Any]]:
    if root in seen:
        raise KustomizeError(f"cycle: {' -> '.join(map(str, (*seen, root)))}")
    kustomization = _load_kustomization(root)
    unknown = set(kustomization) - _KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{root}: unsupported kustomization fields {sorted(unknown)}")

    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources") or []:
        for obj in _load_resource(root, str(entry), (*seen, root)):
            if any(object_id(obj) == object_id(other) for other in objects):
                raise KustomizeError(f"{root}: resource {object_id(obj)} is listed twice")
            objects.append(obj)

    for patch in kustomization.get("patches") or []:
        objects = _apply_patch(root, objects, patch)
    if "namespace" in kustomization:
        _set_namespace(objects, str(kustomization["namespace"]))
    for entry in kustomization.get("labels") or []:
        _add_labels(root, objects, entry)
    for image in kustomization.get("images") or []:
        _set_image(root, objects, image)
    return objects


def _load_kustomization(root: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        candidate = root / name
        if candidate.is_file():
            data = yaml.safe_load(candidate.read_text())
            if not isinstance(data, dict):
                raise KustomizeError(f"{candidate}: not a mapping")
            if data.get("kind", "Kustomization") != "Kustomization":
                raise KustomizeError(f"{candidate}: kind {data.get('kind')!r} is not Kustomization")
            return data
    raise KustomizeError(f"{root}: no kustomization file ({', '.join(KUSTOMIZATION_FILES)})")


def _load_resource(root: Path, entry: str, seen: tuple[Path, ...]) -> list[dict[str, Any]]:
    if "://" in entry or entry.startswith(("github.com/", "git@")):
        raise KustomizeError(f"{root}: remote resource {entry!r} is not supported")
    target = (root / entry).resolve()
    if target.is_dir():
        return _build(target, seen)
    if not target.is_file():
        raise KustomizeError(f"{root}: resource {entry!r} not found")
    _check_inside(root, target)
    return _load_documents(target)


def _check_inside(root: Path, target: Path) -> None:
    """kustomize's default load restrictor: files must lie inside the kustomization's folder."""
    if not target.is_relative_to(root):
        raise KustomizeError(f"{root}: file {target} is outside the kustomization root")


def _load_documents(path: Path) -> list[dict[str, Any]]:
    objects = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{path}: every document must be an object with apiVersion and kind")
        if not (doc.get("metadata") or {}).get("name"):
            raise KustomizeError(f"{path}: {doc['kind']} without metadata.name")
        objects.append(doc)
    return objects


# --- patches --------------------------------------------------------------------------------


def _apply_patch(root: Path, objects: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    unknown = set(spec) - {"path", "patch", "target"}
    if unknown:
        raise KustomizeError(f"{root}: unsupported patch fields {sorted(unknown)}")
    if ("path" in spec) == ("patch" in spec):
        raise KustomizeError(f"{root}: a patch needs exactly one of `path` and `patch`")
    if "path" in spec:
        file = (root / str(spec["path"])).resolve()
        _check_inside(root, file)
        text = file.read_text()
        where = str(file)
    else:
        text = str(spec["patch"])
        where = f"{root} (inline patch)"
    body = yaml.safe_load(text)
    target = spec.get("target")
    if isinstance(body, list):
        if target is None:
            raise KustomizeError(f"{where}: a JSON 6902 patch needs a target")
        matched = _select(objects, target, where)
        for obj in matched:
            _json6902(obj, body, where)
        return objects
    if not isinstance(body, dict):
        raise KustomizeError(f"{where}: a patch is a mapping (strategic merge) or a list (JSON 6902)")
    matched = _select(objects, target, where) if target is not None else _select_by_patch(objects, body, where)
    if body.get("$patch") == "delete":
        doomed = {id(obj) for obj in matched}
        return [obj for obj in objects if id(obj) not in doomed]
    for obj in matched:
        patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
        patch.setdefault("metadata", {})
        patch["metadata"] = {k: v for k, v in patch["metadata"].items() if k not in ("name", "namespace")}
        _merge(obj, patch, where, "")
    return objects


def _select(objects: list[dict[str, Any]], target: dict[str, Any], where: str) -> list[dict[str, Any]]:
    unknown = set(target) - _TARGET_FIELDS
    if unknown:
        raise KustomizeError(f"{where}: unsupported target fields {sorted(unknown)}")
    matched = []
    for obj in objects:
        group, version = _group_version(obj)
        meta = obj.get("metadata") or {}
        fields = {
            "group": group,
            "version": version,
            "kind": str(obj.get("kind")),
            "name": str(meta.get("name")),
            "namespace": str(meta.get("namespace") or ""),
        }
        # kustomize compiles each target field as an anchored regular expression.
        if all(re.fullmatch(str(pattern), fields[key]) for key, pattern in target.items()):
            matched.append(obj)
    if not matched:
        raise KustomizeError(f"{where}: target {target} matches no resource")
    return matched


def _select_by_patch(objects: list[dict[str, Any]], body: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if "kind" not in body or "apiVersion" not in body or not (body.get("metadata") or {}).get("name"):
        raise KustomizeError(f"{where}: a strategic-merge patch without target names apiVersion, kind and name")
    group, _ = _group_version(body)
    meta = body["metadata"]
    matched = [
        obj
        for obj in objects
        if object_id(obj)[:2] == (group, body["kind"])
        and object_id(obj)[3] == meta["name"]
        and (not meta.get("namespace") or object_id(obj)[2] == meta["namespace"])
    ]
    if not matched:
        raise KustomizeError(f"{where}: no resource {body['kind']}/{meta['name']} to patch")
    return matched


def _merge(dst: dict[str, Any], patch: dict[str, Any], where: str, path: str) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"{where}: directive {key} at {path or '/'} is not supported")
        if value is None:
            dst.pop(key, None)
        elif isinstance(value, list):
            raise KustomizeError(
                f"{where}: list at {path}/{key} in a strategic-merge patch (its merge depends on the field's "
                "patch strategy): use a JSON 6902 patch"
            )
        elif isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, where, f"{path}/{key}")
        elif isinstance(value, dict):
            fresh: dict[str, Any] = {}
            _merge(fresh, value, where, f"{path}/{key}")
            dst[key] = fresh
        else:
            dst[key] = value


def _json6902(obj: dict[str, Any], operations: list[Any], where: str) -> None:
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise KustomizeError(f"{where}: every JSON 6902 operation has `op` and `path`")
        kind, path = op["op"], str(op["path"])
        parent, last = _resolve_parent(obj, path, where)
        if kind == "test":
            if _get_child(parent, last, path, where) != op.get("value"):
                raise KustomizeError(f"{where}: test failed at {path}")
        elif kind == "remove":
            _get_child(parent, last, path, where)
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        elif kind == "replace":
            _get_child(parent, last, path, where)
            _put(parent, last, copy.deepcopy(op.get("value")), path, where, insert=False)
        elif kind == "add":
            _put(parent, last, copy.deepcopy(op.get("value")), path, where, insert=True)
        else:
            raise KustomizeError(f"{where}: JSON 6902 op {kind!r} is not supported")


def _pointer(path: str, where: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"{where}: JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _resolve_parent(obj: dict[str, Any], path: str, where: str) -> tuple[Any, str]:
    parts = _pointer(path, where)
    node: Any = obj
    for i, part in enumerate(parts[:-1]):
        node = _get_child(node, part, "/" + "/".join(parts[: i + 1]), where)
    return node, parts[-1]


def _get_child(node: Any, key: str, path: str, where: str) -> Any:
    if isinstance(node, dict):
        if key not in node:
            raise KustomizeError(f"{where}: {path} does not exist")
        return node[key]
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise KustomizeError(f"{where}: {path} is not an index of the list")
        return node[int(key)]
    raise KustomizeError(f"{where}: {path} goes through a scalar")


def _put(parent: Any, key: str, value: Any, path: str, where: str, *, insert: bool) -> None:
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list):
        if insert and key == "-":
            parent.append(value)
        elif key.isdigit() and int(key) <= len(parent) - (0 if insert else 1):
            if insert:
                parent.insert(int(key), value)
            else:
                parent[int(key)] = value
        else:
            raise KustomizeError(f"{where}: {path} is not an index of the list")
    else:
        raise KustomizeError(f"{where}: {path} goes through a scalar")


# --- namespace, labels, images ----------------------------------------------------------------


def _set_namespace(objects: list[dict[str, Any]], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = namespace


def _add_labels(root: Path, objects: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    unknown = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
    if unknown or entry.get("includeSelectors") or entry.get("includeTemplates"):
        raise KustomizeError(f"{root}: only `labels: [{{pairs: ...}}]` on metadata.labels is supported")
    pairs = {str(k): str(v) for k, v in (entry.get("pairs") or {}).items()}
    for obj in objects:
        labels = obj.setdefault("metadata", {}).setdefault("labels", {})
        labels.update(pairs)


def _set_image(root: Path, objects: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    unknown = set(spec) - {"name", "newName", "newTag", "digest"}
    if unknown or "name" not in spec:
        raise KustomizeError(f"{root}: an images entry has `name` and newName/newTag/digest only")
    for obj in objects:
        for container in _containers(obj):
            image = container.get("image")
            if not isinstance(image, str):
                continue
            name, tag, digest = split_image(image)
            if name != spec["name"]:
                continue
            name = str(spec.get("newName", name))
            if "digest" in spec:
                container["image"] = f"{name}@{spec['digest']}"
            elif "newTag" in spec:
                container["image"] = f"{name}:{spec['newTag']}"
            else:
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _containers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``registry:5000/name:tag@sha256:...`` -> (``registry:5000/name``, ``tag``, ``sha256:...``)."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :], digest
    return image, None, digest


# --- ordering -------------------------------------------------------------------------------


def _group_version(obj: dict[str, Any]) -> tuple[str, str]:
    api_version = str(obj.get("apiVersion", ""))
    group, _, version = api_version.rpartition("/")
    return group, version


def _legacy_key(obj: dict[str, Any]) -> tuple[int, str, str, str]:
    kind = str(obj["kind"])
    if kind in _ORDER_FIRST:
        rank = _ORDER_FIRST.index(kind)
    elif kind in _ORDER_LAST:
        rank = len(_ORDER_FIRST) + 1 + _ORDER_LAST.index(kind)
    else:
        rank = len(_ORDER_FIRST)
    group, version = _group_version(obj)
    meta = obj.get("metadata") or {}
    return rank, f"{group}_{version}_{kind}", str(meta.get("namespace") or ""), str(meta.get("name"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="folder holding a kustomization.yaml")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(dump(build(args.path)))
    except KustomizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
