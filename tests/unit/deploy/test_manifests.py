"""The Kubernetes manifests: every overlay renders, every object validates against its schema,
and the pieces agree with each other and with the Serve config generated from serve_config()."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import render, validate
from service.settings import ServerSettings
from tests.unit.deploy.conftest import KUBERAY_OVERLAYS, OVERLAYS, ROOT, find, one, pod_specs

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
OVERLAY_VARIANT = {"cpu": "cpu", "gpu": "gpu"}


def serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    loaded = yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])
    assert isinstance(loaded, dict)
    return loaded


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return list(template["spec"]["containers"])


def quantity(value: Any) -> float:
    """CPU or count quantities as numbers ("500m" -> 0.5, "4" -> 4)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- rendering ------------------------------------------------------------------------------


def test_overlays_exist() -> None:
    assert {"cpu", "gpu", "single-node"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    kinds = sorted(o["kind"] for o in rendered[overlay])
    workload = "RayService" if overlay in KUBERAY_OVERLAYS else "Deployment"
    expected = ["Ingress", "Ingress", "Namespace", "PersistentVolumeClaim", "PersistentVolumeClaim"]
    assert kinds == sorted([*expected, "PodMonitor", "Service", workload])
    for obj in rendered[overlay]:
        if obj["kind"] != "Namespace":  # the only cluster-scoped kind here
            assert obj["metadata"]["namespace"] == "tessera", obj["kind"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tessera"


# --- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_its_schema(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="core Kubernetes schemas: dev extra kubernetes-validate")
    assert validate.validate_objects(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", KUBERAY_OVERLAYS)
def test_rayservice_validates_against_the_crd(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    rayservice = one(rendered[overlay], "RayService")
    assert validate.crd_errors(rayservice, validate.SCHEMAS[("ray.io/v1", "RayService")]) == []
    podmonitor = one(rendered[overlay], "PodMonitor")
    assert validate.crd_errors(podmonitor, validate.SCHEMAS[("monitoring.coreos.com/v1", "PodMonitor")]) == []


def test_crd_schemas_catch_mistakes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The validation is not vacuous: misspelt fields, wrong types, missing required fields fail."""
    schema = validate.SCHEMAS[("ray.io/v1", "RayService")]
    good = one(rendered["gpu"], "RayService")
    cases = {
        "workerGroupSpecs/0: Additional properties": lambda c: c["workerGroupSpecs"][0].update(maxReplica=3),
        "rayStartParams/num-cpus: 0 is not of type 'string'": lambda c: c["headGroupSpec"]["rayStartParams"].update(
            {"num-cpus": 0}
        ),
        "'template' is a required property": lambda c: c["headGroupSpec"].pop("template"),
        "enableInTreeAutoscaling: 'yes' is not of type 'boolean'": lambda c: c.update(enableInTreeAutoscaling="yes"),
        "'containers' is a required property": lambda c: c["workerGroupSpecs"][0]["template"]["spec"].pop("containers"),
    }
    for message, mutate in cases.items():
        bad = copy.deepcopy(good)
        mutate(bad["spec"]["rayClusterConfig"])
        errors = validate.crd_errors(bad, schema)
        assert any(message in e for e in errors), (message, errors)
    podmonitor = copy.deepcopy(one(rendered["gpu"], "PodMonitor"))
    podmonitor["spec"]["podMetricsEndpoints"][0]["metricRelabelings"][0]["action"] = "rename"
    assert validate.crd_errors(podmonitor, validate.SCHEMAS[("monitoring.coreos.com/v1", "PodMonitor")])


def test_core_schemas_catch_mistakes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pytest.importorskip("kubernetes_validate", reason="core Kubernetes schemas: dev extra kubernetes-validate")
    rayservice = copy.deepcopy(one(rendered["cpu"], "RayService"))
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["readinessprobe"] = head.pop("readinessProbe")
    assert any("readinessprobe" in e for e in validate.validate_object(rayservice))
    deployment = copy.deepcopy(one(rendered["single-node"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    assert validate.validate_object(deployment)


# --- the generated Serve config ---------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(render.VARIANTS))
def test_embedded_serve_config_is_what_serve_config_produces_now(variant: str) -> None:
    v = render.VARIANTS[variant]
    assert render.embedded_text(v) == render.serve_config_text(v), "stale: run .venv/bin/python deploy/render.py"


@pytest.mark.parametrize("overlay", KUBERAY_OVERLAYS)
def test_rendered_overlay_carries_its_variant(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    text = one(rendered[overlay], "RayService")["spec"]["serveConfigV2"]
    assert text == render.serve_config_text(render.VARIANTS[OVERLAY_VARIANT[overlay]])


@pytest.mark.parametrize("overlay", KUBERAY_OVERLAYS)
def test_serve_config_validates_with_ray_serve(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    text = one(rendered[overlay], "RayService")["spec"]["serveConfigV2"]
    parsed = ServeDeploySchema.model_validate(yaml.safe_load(text))
    assert [app.import_path for app in parsed.applications] == ["service.serve.app:app_builder"]
    assert validate.validate_serve_config(text) == []


def test_serve_config_checks_catch_mistakes() -> None:
    text = render.serve_config_text(render.VARIANTS["cpu"])
    typo = text.replace("autoscaling_config:", "autoscaling_confg:", 1)
    assert any("unknown field 'autoscaling_confg'" in e for e in validate.validate_serve_config(typo))
    both = yaml.safe_load(text)
    backbone = next(d for d in both["applications"][0]["deployments"] if "autoscaling_config" in d)
    backbone["num_replicas"] = 2
    assert validate.validate_serve_config(yaml.safe_dump(both))
    bad_args = yaml.safe_load(text)
    bad_args["applications"][0]["args"]["no_such_setting"] = 1
    assert any("no_such_setting" in e for e in validate.validate_serve_config(yaml.safe_dump(bad_args)))
    inverted = text.replace("min_replicas: 1", "min_replicas: 9", 1)
    assert any("autoscaling_config" in e for e in validate.validate_serve_config(inverted))


@pytest.mark.parametrize("overlay", KUBERAY_OVERLAYS)
def test_backbones_autoscale_within_the_worker_group(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    config = serve_config(objects)
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    limits = containers(group["template"])[0]["resources"]["limits"]
    worker_cpus, worker_gpus = quantity(limits["cpu"]), quantity(limits.get("nvidia.com/gpu", 0))
    deployments = config["applications"][0]["deployments"]
    backbones = [d for d in deployments if d["name"].startswith("backbone_")]
    assert backbones
    need_cpus = need_gpus = 0.0
    for d in backbones:
        assert "num_replicas" not in d
        scaling, options = d["autoscaling_config"], d["ray_actor_options"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
        assert options["num_cpus"] <= worker_cpus and options["num_gpus"] <= worker_gpus
        need_cpus += scaling["max_replicas"] * options["num_cpus"]
        need_gpus += scaling["max_replicas"] * options["num_gpus"]
    others = [d for d in deployments if d not in backbones]
    need_cpus += sum(d.get("num_replicas", 1) * d["ray_actor_options"].get("num_cpus", 1) for d in others)
    # Every backbone at its max_replicas fits in the worker group at its maxReplicas.
    assert need_cpus <= group["maxReplicas"] * worker_cpus
    assert need_gpus <= group["maxReplicas"] * worker_gpus
    assert (need_gpus > 0) == (overlay == "gpu")


# --- the pieces agree ---------------------------------------------------------------------------


def _mounts(template: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """volume name -> (mountPath in the first container, volume source)."""
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    return {m["name"]: (m["mountPath"], volumes[m["name"]]) for m in containers(template)[0]["volumeMounts"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_sees_models_tokens_and_jobs_where_the_settings_say(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    claims = {o["metadata"]["name"] for o in find(objects, "PersistentVolumeClaim")}
    settings = ServerSettings.model_validate(
        {k: v for k, v in serve_config(rendered["cpu"])["applications"][0]["args"].items() if v is not None}
    )
    assert settings.model_repo == render.MODELS_MOUNT
    assert settings.auth_tokens_file == render.TOKENS_FILE
    assert settings.job_dir == render.JOB_DIR
    specs = pod_specs(objects)
    assert specs
    for where, template in specs:
        env = {e["name"]: e["value"] for e in containers(template)[0]["env"]}
        assert env["TESSERA_MODEL_REPO"] == settings.model_repo, where
        assert env["TESSERA_AUTH_TOKENS_FILE"] == settings.auth_tokens_file, where
        assert env["TESSERA_JOB_DIR"] == settings.job_dir, where
        mounts = {path: source for path, source in _mounts(template).values()}
        models = mounts[settings.model_repo]["persistentVolumeClaim"]
        assert models["claimName"] in claims and models.get("readOnly") is True, where
        assert mounts[settings.job_dir]["persistentVolumeClaim"]["claimName"] in claims, where
        tokens_dir, tokens_key = settings.auth_tokens_file.rsplit("/", 1)
        secret = mounts[tokens_dir]["secret"]
        assert secret["secretName"] == "tessera-tokens" and secret.get("items") in (None, [])
        assert tokens_key == "tokens"  # the Secret's key, created as in docs/deploying.md
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory", where
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000, where


def test_the_tokens_secret_is_not_committed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for objects in rendered.values():
        assert not find(objects, "Secret")
    guide = (ROOT / "docs/deploying.md").read_text()
    assert re.search(r"kubectl (-n tessera )?create secret generic tessera-tokens --from-file=tokens=", guide)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_reaches_the_pods_on_the_contract_ports(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    service = one(objects, "Service", "tessera")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    defaults = ServerSettings()
    assert ports["http"]["targetPort"] == defaults.http_port and ports["grpc"]["targetPort"] == defaults.grpc_port
    selector = service["spec"]["selector"]
    serving = []
    for where, template in pod_specs(objects):
        labels = dict(template["metadata"]["labels"])
        if where.startswith(("head", "worker")):
            labels["ray.io/serve"] = "true"  # set by KubeRay while the pod's Serve proxy is healthy
        if all(labels.get(k) == v for k, v in selector.items()):
            serving.append(where)
            exposed = {p["containerPort"] for p in containers(template)[0]["ports"]}
            assert {defaults.http_port, defaults.grpc_port} <= exposed, where
    expected = [w for w, _ in pod_specs(objects)]
    assert serving == expected
    if overlay in KUBERAY_OVERLAYS:
        assert selector.get("ray.io/serve") == "true", "traffic must only reach pods with a healthy proxy"
        config = serve_config(objects)
        assert config["http_options"]["port"] == defaults.http_port
        if "grpc_options" in config:
            assert config["grpc_options"]["port"] == defaults.grpc_port


def test_ingresses_route_http_and_grpc(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for objects in rendered.values():
        service = one(objects, "Service", "tessera")
        port_names = {p["name"] for p in service["spec"]["ports"]}
        backends = {}
        for ingress in find(objects, "Ingress"):
            for rule in ingress["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    assert backend["name"] == "tessera" and backend["port"]["name"] in port_names
                    backends[backend["port"]["name"]] = ingress
        grpc, http = backends["grpc"], backends["http"]
        assert grpc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
        assert grpc["spec"]["tls"], "nginx serves HTTP/2 (gRPC) to clients only over TLS"
        assert "backend-protocol" not in " ".join(http["metadata"].get("annotations", {}))
        body = http["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        size = int(body[:-1]) << {"k": 10, "m": 20, "g": 30}[body[-1].lower()]
        defaults = ServerSettings()
        assert size >= max(defaults.max_body_bytes, getattr(defaults, "max_slide_bytes", 0))
        grpc_body = grpc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        assert int(grpc_body[:-1]) << {"k": 10, "m": 20, "g": 30}[grpc_body[-1].lower()] >= defaults.max_body_bytes


def test_probes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    defaults = ServerSettings()
    for overlay in KUBERAY_OVERLAYS:
        for where, template in pod_specs(rendered[overlay]):
            container = containers(template)[0]
            ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
            assert live["path"] == "/api/local_raylet_healthz", where
            if where == "head":
                # KubeRay submits serveConfigV2 only once the head is Ready: a readiness probe on the
                # app (port 8000) would wait for a deployment that waits for it.
                assert ready["port"] != defaults.http_port and ready["path"] == "/api/gcs_healthz"
            else:
                assert (ready["port"], ready["path"]) == (defaults.http_port, "/-/healthz"), where
    (_, template), *_ = pod_specs(rendered["single-node"])
    container = containers(template)[0]
    assert container["command"] == ["tessera", "serve", "--host", "0.0.0.0"]
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready")):
        assert container[probe]["httpGet"] == {"path": path, "port": defaults.http_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": defaults.http_port}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_gpus(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    tag = f"{VERSION}-gpu" if overlay == "gpu" else VERSION
    for where, template in pod_specs(rendered[overlay]):
        container = containers(template)[0]
        assert container["image"] == f"registry.example.com/tessera:{tag}", where
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
        assert gpus == (1 if overlay == "gpu" and where.startswith("worker") else 0), where
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert quantity(requests["cpu"]) <= quantity(limits["cpu"]), where
    if overlay in KUBERAY_OVERLAYS:
        cluster = one(rendered[overlay], "RayService")["spec"]["rayClusterConfig"]
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "replicas belong on workers"
        tolerations = cluster["workerGroupSpecs"][0]["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations) == (overlay == "gpu")


def test_ray_version_is_the_installed_ray(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import ray

    for overlay in KUBERAY_OVERLAYS:
        cluster = one(rendered[overlay], "RayService")["spec"]["rayClusterConfig"]
        assert cluster["rayVersion"] == ray.__version__


# --- metrics --------------------------------------------------------------------------------


def relabel(labels: dict[str, str], rule: dict[str, Any]) -> dict[str, str]:
    """Prometheus' `replace` relabel action (regex fully anchored, $N expands to group N)."""
    assert rule.get("action", "replace") in ("replace", "Replace")
    value = rule.get("separator", ";").join(labels.get(name, "") for name in rule["sourceLabels"])
    match = re.fullmatch(rule.get("regex", "(.*)"), value)
    if match is None:
        return labels
    target = re.sub(
        r"\$(\d+)|\$\{(\d+)\}", lambda m: match.group(int(m.group(1) or m.group(2))) or "", rule["replacement"]
    )
    out = dict(labels)
    if target:
        out[rule["targetLabel"]] = target
    else:
        out.pop(rule["targetLabel"], None)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_podmonitor_scrapes_every_pod_and_restores_contract_names(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    monitor = one(objects, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    metrics_port = ServerSettings().metrics_port
    for where, template in pod_specs(objects):
        assert all(template["metadata"]["labels"].get(k) == v for k, v in selector.items()), where
        named = {p["name"]: p["containerPort"] for p in containers(template)[0]["ports"]}
        assert named[endpoint["port"]] == metrics_port, where
    for obj in find(objects, "RayService"):
        cluster = obj["spec"]["rayClusterConfig"]
        for params in [
            cluster["headGroupSpec"]["rayStartParams"],
            *(g["rayStartParams"] for g in cluster["workerGroupSpecs"]),
        ]:
            assert params["metrics-export-port"] == str(metrics_port)
    (rule,) = endpoint["metricRelabelings"]
    samples = {
        "ray_tessera_requests_total": "tessera_requests_total",
        "ray_tessera_stage_duration_seconds_bucket": "tessera_stage_duration_seconds_bucket",
        "ray_serve_num_http_requests_total": "ray_serve_num_http_requests_total",
        "tessera_requests_total": "tessera_requests_total",
        "my_ray_tessera_total": "my_ray_tessera_total",
    }
    for before, after in samples.items():
        assert relabel({"__name__": before, "model": "vit_small"}, rule) == {"__name__": after, "model": "vit_small"}


# --- the Job that fills the model volume ---------------------------------------------------------

JOB = ROOT / "deploy/jobs/build-models.yaml"


def load_job() -> dict[str, Any]:
    (job,) = [doc for doc in yaml.safe_load_all(JOB.read_text()) if doc]
    return job


def test_build_job_fills_the_claim_the_pods_read(rendered: dict[str, list[dict[str, Any]]]) -> None:
    job = load_job()
    template = job["spec"]["template"]
    container = containers(template)[0]
    assert job["metadata"]["namespace"] == "tessera"
    assert {containers(t)[0]["image"] for _, t in pod_specs(rendered["cpu"])} == {container["image"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    (path, volume) = next(s for s in _mounts(template).values() if s[0] == env["TESSERA_MODEL_REPO"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    for objects in rendered.values():
        for where, pod in pod_specs(objects):
            served = {p: s for p, s in _mounts(pod).values()}[render.MODELS_MOUNT]
            assert served["persistentVolumeClaim"]["claimName"] == volume["persistentVolumeClaim"]["claimName"], where
        # Its pod is not a Tessera server: neither the Service nor the PodMonitor may select it.
        labels = template["metadata"]["labels"]
        for selector in (
            one(objects, "Service", "tessera")["spec"]["selector"],
            one(objects, "PodMonitor")["spec"]["selector"]["matchLabels"],
        ):
            assert not all(labels.get(k) == v for k, v in selector.items())


def test_build_job_validates() -> None:
    pytest.importorskip("kubernetes_validate", reason="core Kubernetes schemas: dev extra kubernetes-validate")
    assert validate.validate_object(load_job()) == []


def test_build_job_seeds_the_volume_without_overwriting(tmp_path: Path) -> None:
    script = containers(load_job()["spec"]["template"])[0]["command"]
    assert script[:2] == ["/bin/sh", "-ec"]
    image, volume, bin_dir = tmp_path / "image", tmp_path / "volume", tmp_path / "bin"
    (image / "vit_small").mkdir(parents=True)
    (image / "vit_small" / "config.yaml").write_text("from the image\n")
    (image / "routes.yaml").write_text("routes\n")
    (volume / "vit_small").mkdir(parents=True)
    (volume / "vit_small" / "config.yaml").write_text("yours: a real checkpoint\n")
    bin_dir.mkdir()
    (bin_dir / "tessera").write_text(f'#!/bin/sh\necho "tessera $*" > "{tmp_path}/called"\n')
    (bin_dir / "tessera").chmod(0o755)
    body = script[2].replace("cd /models", f"cd {image}").replace("/volume/", f"{volume}/")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([*script[:2], body], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (volume / "vit_small" / "config.yaml").read_text() == "yours: a real checkpoint\n"
    assert (volume / "routes.yaml").read_text() == "routes\n"
    assert (tmp_path / "called").read_text() == "tessera build\n"


# --- waiting for the model repository --------------------------------------------------------------


def wait_containers(rendered: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for overlay, objects in rendered.items():
        for where, template in pod_specs(objects):
            for init in template["spec"].get("initContainers", []):
                if init["name"] == "wait-for-models":
                    out.append((f"{overlay}:{where}", init))
    return out


def test_the_app_waits_for_a_built_model_repository(rendered: dict[str, list[dict[str, Any]]]) -> None:
    found = wait_containers(rendered)
    assert sorted(w for w, _ in found) == sorted(
        [f"{o}:head" for o in KUBERAY_OVERLAYS] + ["single-node:deployment:tessera"]
    )
    scripts = {init["command"][2] for _, init in found}
    assert len(scripts) == 1, "the head and the single-node pod wait with different scripts"
    for where, init in found:
        assert {e["name"]: e["value"] for e in init["env"]}["TESSERA_MODEL_REPO"] == render.MODELS_MOUNT, where
        assert init["volumeMounts"] == [{"name": "models", "mountPath": render.MODELS_MOUNT, "readOnly": True}]


def test_wait_script_blocks_until_every_model_has_a_manifest(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from service.models import Manifest, ModelRepository

    (_, init), *_ = wait_containers(rendered)
    assert init["command"][0] == "python"
    command = [sys.executable, *init["command"][1:]]  # the image's python is the venv's
    repo = tmp_path / "models"
    (repo / "vit_small").mkdir(parents=True)
    (repo / "vit_small" / "config.yaml").write_text((render.DEFAULT_MODEL_REPO / "vit_small/config.yaml").read_text())
    env = {**os.environ, "TESSERA_MODEL_REPO": str(repo)}
    waiting = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout is not None
        line = waiting.stdout.readline()
        assert "waiting for the model repository" in line and "not built" in line
        assert waiting.poll() is None
    finally:
        waiting.kill()
        waiting.wait(timeout=30)
    manifest = ModelRepository(repo).manifest_path("vit_small")
    manifest.parent.mkdir()
    Manifest(
        model="vit_small",
        version=1,
        config_sha256="0",
        weights="untrained",
        arch={},
        params=1,
        gmacs_native=1.0,
        native_size=224,
    ).write(manifest)
    assert subprocess.run(command, env=env, capture_output=True, timeout=60).returncode == 0
