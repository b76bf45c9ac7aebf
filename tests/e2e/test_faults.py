"""Fault injection against a real `tessera serve`: the process running the model is SIGKILLed in
the middle of a bounded load (only this server's: other Tessera instances on the machine are left
alone). Nothing may hang; Ray Serve restarts the replica and requests succeed again within a minute.

Two set-ups. ``split`` (``--topology split --front-end ray``, what a cluster runs): the backbone
replica dies, the ingress and Ray's proxy live on, so every answer is either the right embedding or
a clean JSON 5xx. ``default`` (``tessera serve`` on one host: colocated + the replica's own
servers): the model runs in the ingress replica, which holds the ports, so the requests in flight
with it lose their connection and new ones are refused until Ray has restarted it; none may hang.

The same servers run with access control on (``TESSERA_AUTH_TOKENS``), which also checks, end to
end, that the token reaches the Ray replicas and that both gRPC front ends (Ray's proxy, the
replica's own server) pass ``authorization``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import psutil
import pytest

from tests.helpers import jpeg_bytes, make_vit_only_repo, start_tessera_serve, stop_process_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "e2e-fault-token-5b1d"
AUTH = {"authorization": f"Bearer {TOKEN}"}
REQUESTS = 60
BURST = 16  # of which sent together just before the kill
SPREAD_S = 10.0  # the load is spread over about this long
KILL_AFTER_S = 3.0
REQUEST_TIMEOUT_S = 45.0  # no request may take longer: past this it counts as a hang
RECOVERY_S = 60.0


@dataclass(frozen=True)
class Server:
    base: str
    grpc: str
    proc: subprocess.Popen[str]
    victim: str  # in the command line of the Ray worker that runs the model
    holds_ports: bool  # that worker also holds the ports: its connections go with it


#: set-up -> tessera serve flags
SETUPS = {"split": ("--topology", "split", "--front-end", "ray"), "default": ()}


@pytest.fixture(scope="module", params=list(SETUPS))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = make_vit_only_repo(tmp_path_factory.mktemp("faults_repo"))
    proc, ports, ready = start_tessera_serve(
        model_repo=root,
        env={"TESSERA_AUTH_TOKENS": TOKEN},
        cwd=tmp_path_factory.mktemp("faults_cwd"),
        args=SETUPS[request.param],
    )
    try:
        # what the set-up is, as the ready line says (the default: colocated + replica on this host)
        assert ready.endswith(")") and "(front end " in ready, ready
        colocated = ready.endswith("topology colocated)")
        victim = "ServeReplica:tessera:Ingress" if colocated else "backbone_vit_small"
        holds_ports = colocated and "front end replica" in ready
        yield Server(f"http://127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}", proc, victim, holds_ports)
    finally:
        stop_process_tree(proc, grace_s=90)


def _model_processes(server: Server) -> list[psutil.Process]:
    """The Ray worker processes hosting this server's vit_small model (its backbone replica, or
    the ingress replica that holds it).

    Only descendants of our ``tessera serve`` (the embedded Ray's raylet and its workers are):
    another Tessera running on the machine must not be touched.
    """
    try:
        family = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in family:
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if server.victim in cmdline:
            found.append(proc)
    return found


def _predict(base: str, image: bytes, timeout: float = REQUEST_TIMEOUT_S) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/predict", content=image, headers={"content-type": "image/jpeg", **AUTH}, timeout=timeout
    )


def test_model_process_killed_mid_load_fails_cleanly_and_recovers(server: Server) -> None:
    image = jpeg_bytes(seed=21)
    reference = _predict(server.base, image)
    assert reference.status_code == 200, reference.text
    expected = np.asarray(reference.json()["embedding"])
    victims = _model_processes(server)
    assert victims, f"no process of this server with {server.victim} in its command line"

    start_at = time.monotonic() + 0.5
    killed_at = start_at + KILL_AFTER_S

    def _send_time(i: int) -> float:
        """A steady trickle over SPREAD_S, with a burst just before the kill (in flight when it lands)."""
        if i < BURST:
            return killed_at - 0.15 + i * 0.005
        return start_at + (i - BURST) * SPREAD_S / (REQUESTS - BURST)

    def call(i: int) -> tuple[str, float, float, str]:
        """(outcome, sent and answered in seconds relative to the kill, error message)."""
        time.sleep(max(0.0, _send_time(i) - time.monotonic()))
        sent = time.monotonic()
        try:
            r = _predict(server.base, image)
        except httpx.TimeoutException:
            return "hang", sent - killed_at, time.monotonic() - killed_at, ""
        except httpx.TransportError as exc:  # the connection lost or refused
            return "connection lost", sent - killed_at, time.monotonic() - killed_at, type(exc).__name__
        done = time.monotonic()
        if r.status_code == 200:
            same = np.allclose(r.json()["embedding"], expected, atol=1e-4)
            return ("200 correct" if same else "200 WRONG"), sent - killed_at, done - killed_at, ""
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return f"{r.status_code} NOT JSON", sent - killed_at, done - killed_at, r.text[:200]
        kind = "clean" if r.status_code >= 500 and message else "UNEXPECTED"
        return f"{r.status_code} {kind}", sent - killed_at, done - killed_at, message[:160]

    with ThreadPoolExecutor(REQUESTS) as pool:
        futures = [pool.submit(call, i) for i in range(REQUESTS)]
        time.sleep(max(0.0, killed_at - time.monotonic()))
        for victim in victims:
            victim.send_signal(signal.SIGKILL)
        outcomes = [f.result(timeout=SPREAD_S + REQUEST_TIMEOUT_S + 30) for f in futures]

    after_kill = [done for kind, sent, done, _ in outcomes if sent >= 0 and kind == "200 correct"]
    recovered_after = min(after_kill) if after_kill else None
    while recovered_after is None and time.monotonic() - killed_at < RECOVERY_S:
        try:
            r = _predict(server.base, image, timeout=30)
            if r.status_code == 200 and np.allclose(r.json()["embedding"], expected, atol=1e-4):
                recovered_after = time.monotonic() - killed_at
        except httpx.TransportError:  # a timeout; or refused while the replica holding the ports restarts
            pass
        time.sleep(1.0)
    replacements = [p.pid for p in _model_processes(server)]

    counts = Counter(kind for kind, _, _, _ in outcomes)
    in_flight = sum(1 for _, sent, done, _ in outcomes if sent < 0 < done)
    slowest = max(done - sent for _, sent, done, _ in outcomes)
    print(
        f"\nfault: SIGKILL of {len(victims)} {server.victim} process(es) {KILL_AFTER_S:.0f} s into {REQUESTS} requests "
        f"sent over {SPREAD_S:.0f} s ({in_flight} in flight at the kill)"
    )
    print("outcomes: " + ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items())))
    for message in sorted({m for _, _, _, m in outcomes if m}):
        print(f"  error message: {message}")
    print(
        f"slowest answer {slowest:.1f} s; first correct answer to a request sent after the kill: "
        f"{recovered_after if recovered_after is None else round(recovered_after, 1)} s after it"
    )
    print(f"model pids before {[p.pid for p in victims]}, after {replacements}")

    assert "hang" not in counts, counts
    allowed = {"200 correct", "connection lost"} if server.holds_ports else {"200 correct"}
    assert all(kind in allowed or kind.endswith(" clean") for kind in counts), outcomes
    # a lost connection is a request the dead process held, or one sent before its replacement listened
    lost = [(sent, done) for kind, sent, done, _ in outcomes if kind == "connection lost"]
    assert all(done >= 0 for _, done in lost), lost
    assert counts["200 correct"] > 0
    assert recovered_after is not None, f"no correct answer within {RECOVERY_S:.0f} s of the kill"
    assert replacements and not set(replacements) & {p.pid for p in victims}


def test_access_control_end_to_end(server: Server) -> None:
    """Tokens from the environment reach the replicas; REST and gRPC (Ray's proxy, or the replica's own
    server) both enforce them."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    assert httpx.get(f"{server.base}/v2/health/ready", timeout=30).status_code == 200
    refused = httpx.get(f"{server.base}/v1/models", timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    wrong = httpx.get(f"{server.base}/v1/models", headers={"authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403
    assert httpx.get(f"{server.base}/v1/models", headers=AUTH, timeout=30).status_code == 200

    with triton.InferenceServerClient(server.grpc) as client:
        assert client.is_server_live()
        with pytest.raises(InferenceServerException) as err:
            client.get_model_metadata("vit_small")
        assert "UNAUTHENTICATED" in str(err.value.status())
        with pytest.raises(InferenceServerException) as err:
            client.get_model_metadata("vit_small", headers={"authorization": "Bearer nope"})
        assert "PERMISSION_DENIED" in str(err.value.status())
        assert client.get_model_metadata("vit_small", headers=AUTH).name == "vit_small"
