"""``topology``: backbones in their own deployments (split) or held by the ingress replicas (colocated)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import yaml

from service.errors import NotFound
from service.models import ModelRepository
from service.serve.config import INGRESS, deployment_options, serve_config, states_in_ingress
from service.settings import ServerSettings
from tests.helpers import make_small_repo


@pytest.fixture
def two_models(tmp_path: Path) -> Path:
    root = make_small_repo(tmp_path / "repo", ["vit_small", "swin_tiny"])
    for name, cpus, gpus in (("vit_small", 0.5, 0.25), ("swin_tiny", 1.0, 0.5)):
        path = root / name / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config.setdefault("batching", {}).update(num_cpus=cpus, num_gpus=gpus)
        path.write_text(yaml.safe_dump(config))
    return root


def test_split_deploys_a_backbone_per_model_beside_a_light_ingress(two_models: Path) -> None:
    options = deployment_options(
        ServerSettings(model_repo=str(two_models), topology="split"), ModelRepository(two_models)
    )
    assert {"backbone_vit_small", "backbone_swin_tiny"} <= set(options)
    assert options[INGRESS]["ray_actor_options"] == {"num_cpus": 0.1}
    assert options["backbone_swin_tiny"]["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}


def test_colocated_ingress_asks_for_the_models_resources_and_no_backbone_deploys(two_models: Path) -> None:
    settings = ServerSettings(model_repo=str(two_models), topology="colocated")
    options = deployment_options(settings, ModelRepository(two_models))
    assert not [name for name in options if name.startswith("backbone_")]
    # CPUs add up (every model's batches run in the replica); the models share the replica's GPU.
    assert options[INGRESS]["ray_actor_options"] == {"num_cpus": 1.5, "num_gpus": 0.5}
    config = serve_config(settings)
    app = config["applications"][0]
    assert app["args"]["topology"] == "colocated"
    # the one ingress replica keeps the models' states itself: no ModelStates deployment
    assert [d["name"] for d in app["deployments"]] == [INGRESS, "SlideJobs"]


@pytest.mark.parametrize(
    ("topology", "ingress_replicas", "in_ingress"),
    [
        ("colocated", 1, True),  # one process holds every model and decodes every request
        ("colocated", 2, False),  # two replicas follow one decision: the states are shared
        ("split", 1, False),  # backbone replicas report from processes of their own
    ],
)
def test_where_the_models_states_live(
    two_models: Path, topology: Literal["colocated", "split"], ingress_replicas: int, in_ingress: bool
) -> None:
    settings = ServerSettings(model_repo=str(two_models), topology=topology, ingress_replicas=ingress_replicas)
    assert states_in_ingress(settings) is in_ingress
    assert ("ModelStates" not in deployment_options(settings, ModelRepository(two_models))) is in_ingress
    with pytest.raises(ValueError, match="auto"):  # decided on a concrete topology only
        states_in_ingress(ServerSettings(model_repo=str(two_models), topology="auto"))


def test_topology_from_the_environment_and_the_command_line(
    two_models: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli.main import main

    monkeypatch.setenv("TESSERA_TOPOLOGY", "colocated")
    assert ServerSettings.from_env().topology == "colocated"
    monkeypatch.delenv("TESSERA_TOPOLOGY")
    assert main(["--model-repo", str(two_models), "serve", "--topology", "colocated", "--print-config"]) == 0
    deployments = [d["name"] for d in json.loads(capsys.readouterr().out)["applications"][0]["deployments"]]
    assert deployments == [INGRESS, "SlideJobs"]
    with pytest.raises(SystemExit):
        main(["serve", "--topology", "sideways"])
    with pytest.raises(ValueError, match="topology"):
        ServerSettings(topology="sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("embedded", "gpus", "front_end", "topology"),
    [
        (True, 0.0, "replica", "colocated"),  # tessera serve on a CPU host: no proxy, no hop
        (True, 1.0, "replica", "colocated"),  # ... on a one-GPU host: the models share its GPU
        (True, 2.0, "replica", "split"),  # ... on several GPUs: a deployment per model spreads them
        (True, None, "replica", "auto"),  # Ray has not counted the GPUs yet
        (False, None, "ray", "split"),  # a cluster (--address, KubeRay): its proxies, a deployment per model
    ],
)
def test_auto_resolves_to_the_fastest_set_up_on_one_host_and_the_scalable_one_on_a_cluster(
    embedded: bool, gpus: float | None, front_end: str, topology: str
) -> None:
    from service.serve.config import resolve_layout

    resolved = resolve_layout(ServerSettings(), embedded=embedded, gpus=gpus)
    assert (resolved.front_end, resolved.topology) == (front_end, topology)
    chosen = ServerSettings(front_end="haproxy", topology="split")  # what a user sets is kept
    assert resolve_layout(chosen, embedded=embedded, gpus=gpus) == chosen


def test_deployments_are_not_built_from_an_unresolved_layout(two_models: Path) -> None:
    with pytest.raises(ValueError, match="resolve_layout"):
        deployment_options(ServerSettings(model_repo=str(two_models)), ModelRepository(two_models))


def test_the_kuberay_config_and_app_builder_resolve_auto_to_split_behind_the_clusters_proxies(
    two_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.serve import app as app_module

    app = serve_config(ServerSettings(model_repo=str(two_models)))["applications"][0]
    assert app["args"]["topology"] == "split" and "front_end" not in app["args"]
    assert {"backbone_vit_small", "backbone_swin_tiny"} <= {d["name"] for d in app["deployments"]}
    built: list[ServerSettings] = []
    monkeypatch.setattr(app_module, "build_app", built.append)
    app_module.app_builder({"model_repo": str(two_models)})
    assert (built[0].front_end, built[0].topology) == ("ray", "split")


def test_a_backbone_host_batches_single_images_and_runs_ready_batches(small_repo: Path) -> None:
    """What a colocated ingress holds (and a Backbone replica wraps), run outside Ray."""
    from service.serve.backbone import BackboneHost
    from service.serve.ingress import HostClient

    async def scenario() -> None:
        host = BackboneHost(str(small_repo), "vit_small", intra_op_threads=1)
        assert host.state == "ready" and host.backend is not None
        client = HostClient({"vit_small": host})
        rng = np.random.default_rng(0)
        images = rng.standard_normal((3, 3, 224, 224)).astype(np.float32)
        singles = await asyncio.gather(*(client.infer("vit_small", image) for image in images))
        batch = await client.infer_batch("vit_small", images)
        assert [r["batch_size"] for r in batch] == [3, 3, 3]
        assert max(r["batch_size"] for r in singles) > 1  # queued together, run together
        for one, row in zip(singles, batch, strict=True):
            np.testing.assert_allclose(one["outputs"]["embedding"], row["outputs"]["embedding"], atol=1e-4)
        with pytest.raises(NotFound, match="nat_tiny"):
            await client.infer("nat_tiny", images[0])
        host.backend.close()

    asyncio.run(scenario())


def test_a_model_that_cannot_load_in_the_ingress_fails_alone(small_repo: Path) -> None:
    """Colocated, a runtime that cannot run is that model's failed state (with the reason), not the
    ingress replica's death; in its own Backbone replica it still fails the replica."""
    from service.errors import RuntimeUnavailable
    from service.serve.backbone import BackboneHost

    async def scenario() -> None:
        host = BackboneHost(str(small_repo), "vit_small", runtime="tensorrt", in_ingress=True)
        assert host.backend is None and host.state == "failed"
        assert host.reason.startswith("RuntimeUnavailable") and "cannot run on this host" in host.reason
        with pytest.raises(Exception, match="failed"):
            await host.infer(np.zeros((3, 224, 224), np.float32))
        # what a Backbone replica builds from the service's settings: their runtime reaches the host
        with pytest.raises(RuntimeUnavailable):
            BackboneHost.from_settings(ServerSettings(model_repo=str(small_repo), runtime="tensorrt"), "vit_small")
        # on the CPU the host lets as many batches run at once as the backend has lanes
        laned = BackboneHost.from_settings(ServerSettings(model_repo=str(small_repo), intra_op_threads=2), "vit_small")
        assert laned.backend is not None and laned.backend.lanes == 2 and laned._batcher.max_concurrent == 2
        one = ServerSettings(model_repo=str(small_repo), intra_op_threads=2, cpu_lanes=1)
        assert BackboneHost.from_settings(one, "vit_small")._batcher.max_concurrent == 1
        settings = ServerSettings(model_repo=str(small_repo), runtime="tensorrt", intra_op_threads=1)
        colocated = BackboneHost.from_settings(settings, "vit_small", in_ingress=True)
        assert colocated.state == "failed" and colocated._load_options["intra_op_threads"] == 1

    asyncio.run(scenario())


def test_deployments_that_cannot_all_be_placed_are_named_with_what_they_ask(two_models: Path) -> None:
    from service.serve.config import placement_shortfall

    repo = ModelRepository(two_models)
    colocated = deployment_options(ServerSettings(model_repo=str(two_models), topology="colocated"), repo)
    assert placement_shortfall(colocated, cpus=2.0, gpus=1.0) is None  # 1.5 + 0.1 (SlideJobs) CPUs
    twice = deployment_options(
        ServerSettings(model_repo=str(two_models), topology="colocated", ingress_replicas=2), repo
    )
    why = placement_shortfall(twice, cpus=2.0, gpus=1.0)
    assert why == "3.1 CPUs (Ingress 2 x 1.5 + SlideJobs 1 x 0.1) but Ray has 2"  # 2 x 0.5 GPUs fit on one
    assert placement_shortfall(twice, cpus=4.0, gpus=1.0) is None
    # GPUs asked of a host without one: the replicas would wait for them forever.
    split = deployment_options(ServerSettings(model_repo=str(two_models), topology="split"), repo)
    no_gpu = placement_shortfall(split, cpus=8.0, gpus=0.0)
    assert no_gpu == "0.75 GPUs (backbone_swin_tiny 1 x 0.5 + backbone_vit_small 1 x 0.25) but Ray has 0"


def test_placement_counts_as_ray_places() -> None:
    """Ray's defaults and packing: a replica naming no CPUs reserves one, an autoscaled deployment
    starts with its minimum, and a fraction of a GPU must fit inside one GPU."""
    from service.serve.config import placement_shortfall

    def gpu(replicas: int, each: float) -> dict[str, dict[str, object]]:
        return {"m": {"num_replicas": replicas, "ray_actor_options": {"num_cpus": 0, "num_gpus": each}}}

    assert placement_shortfall({"a": {}, "b": {}}, cpus=1.5, gpus=0) == "2 CPUs (a 1 x 1 + b 1 x 1) but Ray has 1.5"
    scaled = {"a": {"num_replicas": "auto", "autoscaling_config": {"min_replicas": 2, "max_replicas": 8}}}
    assert placement_shortfall(scaled, cpus=2, gpus=0) is None
    assert placement_shortfall(scaled, cpus=1, gpus=0) == "2 CPUs (a 2 x 1) but Ray has 1"
    assert placement_shortfall(gpu(2, 0.6), cpus=1, gpus=2) is None
    packed = placement_shortfall(gpu(3, 0.6), cpus=1, gpus=2)  # 1.8 <= 2, but only two fit
    assert packed == "1.8 GPUs (m 3 x 0.6) but Ray has 2 (a fraction of a GPU must fit inside one)"
    assert placement_shortfall(gpu(4, 0.5), cpus=1, gpus=2) is None
    assert placement_shortfall({**gpu(1, 0.5), "w": gpu(1, 2.0)["m"]}, cpus=1, gpus=2) is not None
    assert placement_shortfall({**gpu(1, 0.5), "w": gpu(1, 2.0)["m"]}, cpus=1, gpus=3) is None


def test_tessera_serve_refuses_before_serving_what_ray_cannot_place(two_models: Path) -> None:
    from service.serve.runner import _refuse_unplaceable

    settings = ServerSettings(model_repo=str(two_models), topology="colocated", ingress_replicas=2)
    with pytest.raises(ValueError) as refused:
        _refuse_unplaceable(settings, {"CPU": 2.0, "GPU": 1.0})
    message = str(refused.value)
    assert message.startswith("cannot start on this host: the deployments ask for 3.1 CPUs (Ingress 2 x 1.5")
    assert "Lower TESSERA_INGRESS_REPLICAS or the models' batching" in message
    assert "each colocated ingress replica asks for the num_cpus of every model" in message
    _refuse_unplaceable(settings, {"CPU": 4.0, "GPU": 1.0})  # fits: nothing raised
    split = ServerSettings(model_repo=str(two_models), topology="split")
    with pytest.raises(ValueError, match="GPUs") as refused:
        _refuse_unplaceable(split, {"CPU": 8.0})  # no GPU on this host
    assert "TESSERA_INGRESS_REPLICAS" not in str(refused.value) and "colocated" not in str(refused.value)


def test_a_colocated_host_follows_the_ingress_own_state_book(small_repo: Path) -> None:
    """With the states in the ingress (one colocated replica) the host reports to the book in its own
    process, and a load or unload sent there reaches it as one through the ModelStates deployment does."""
    from service.serve.backbone import BackboneHost
    from service.serve.models import ModelStateBook

    async def until(check: Any, timeout_s: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "the host did not follow the book"
            await asyncio.sleep(0.1)

    async def scenario() -> None:
        book = ModelStateBook(ServerSettings(model_repo=str(small_repo)).model_dump(mode="json"))
        host = BackboneHost(str(small_repo), "vit_small", intra_op_threads=1, states=book, in_ingress=True)
        try:
            assert host.state == "ready"
            await until(lambda: book.models["vit_small"].replicas)  # its first report
            assert (await book.states())["vit_small"].state == "ready"
            await book.unload("vit_small")
            await until(lambda: host.backend is None and host.state == "unloaded")
            await until(lambda: book.models["vit_small"].replicas[host._id].state == "unloaded")
            assert (await book.states())["vit_small"].state == "unloaded"
            await book.load("vit_small")
            await until(lambda: host.state == "ready" and host.backend is not None)
            await until(lambda: book.models["vit_small"].replicas[host._id].state == "ready")
            assert (await book.states())["vit_small"].state == "ready"
        finally:
            host._follower.cancel()
            if host.backend is not None:
                host.backend.close()

    asyncio.run(scenario())
