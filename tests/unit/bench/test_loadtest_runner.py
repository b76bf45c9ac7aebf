"""The load-test runner's guards (loopback only, bounded), its Locust command and the workload helpers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest import runner
from loadtest.options import add_loadtest_arguments
from loadtest.runner import LoadtestOptions, locust_command, options_from_args, parse_duration
from loadtest.workload import (
    Workload,
    is_loopback_host,
    multipart_body,
    parse_sizes,
    parse_weights,
    require_loopback_target,
    require_loopback_url,
)
from service.clients.oip import oip_binary_body, parse_oip_binary_response


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "https://127.4.5.6", "http://LOCALHOST"],
)
def test_loopback_urls_are_accepted(url: str) -> None:
    assert require_loopback_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:8000",
        "http://192.168.1.2",
        "http://example.com",
        "http://0.0.0.0:8000",
        "http://127.0.0.1.nip.io:8000",
        "http://localhost.example.com",
        "ftp://127.0.0.1",
        "127.0.0.1:8000",
        "http://[2001:db8::1]:8000",
    ],
)
def test_other_hosts_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        require_loopback_url(url)


def test_grpc_targets() -> None:
    assert require_loopback_target("127.0.0.1:9000") == "127.0.0.1:9000"
    assert require_loopback_target("[::1]:9000") == "[::1]:9000"
    assert is_loopback_host("::1") and not is_loopback_host("8.8.8.8")
    for bad in ("10.1.1.1:9000", "example.com:9000", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:http"):
        with pytest.raises(ValueError):
            require_loopback_target(bad)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-repo", default="model_repo")
    add_loadtest_arguments(parser)
    return parser.parse_args(list(argv))


def test_options_refuse_remote_hosts_and_unbounded_runs() -> None:
    with pytest.raises(ValueError, match="loopback"):
        options_from_args(_args("--host", "http://203.0.113.9:8000"))
    with pytest.raises(ValueError, match="loopback"):
        options_from_args(_args("--grpc-host", "203.0.113.9:9000"))
    with pytest.raises(ValueError, match="users"):
        options_from_args(_args("--users", "5000"))
    with pytest.raises(ValueError, match="spawn_rate"):
        options_from_args(_args("--spawn-rate", "0"))
    with pytest.raises(ValueError, match="duration"):
        options_from_args(_args("--duration", "2h"))
    with pytest.raises(ValueError, match="unknown name"):
        options_from_args(_args("--mix", "predict=1,ddos=5"))
    options = options_from_args(_args("--users", "4", "-t", "15s", "--mix", "predict=1,oip=1", "--sizes", "224=1"))
    assert (options.users, options.duration_s, options.start) == (4, 15, False)


def test_main_refuses_a_remote_host_before_running_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = runner.main(["--host", "http://example.com:8000", "--out", str(tmp_path)])
    assert code == 2
    assert "loopback" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("2m", 120), ("1m30s", 90), ("30M", 1800)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "31m", "1h", "abc", "10 minutes", "-5s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_locust_command_runs_only_the_mixed_users(tmp_path: Path) -> None:
    options = LoadtestOptions(users=4, spawn_rate=2, duration_s=15, mix="predict=3,oip=1,grpc=0", out=tmp_path)
    kinds = options.workload("127.0.0.1:9000").active_kinds()
    command = locust_command(options, "http://127.0.0.1:8123", tmp_path, kinds)
    assert command[1:3] == ["-m", "locust"]
    assert command[-2:] == ["PredictUser", "OipUser"]
    for flag, value in (
        ("--users", "4"),
        ("--spawn-rate", "2"),
        ("--run-time", "15s"),
        ("--host", "http://127.0.0.1:8123"),
        ("--csv", str(tmp_path / "locust")),
        ("--html", str(tmp_path / "report.html")),
    ):
        assert command[command.index(flag) + 1] == value
    assert "--headless" in command


def test_workload_round_trips_through_the_environment() -> None:
    workload = Workload(
        mix=parse_weights("predict=2,oip=1,grpc=0,slide=1"),
        sizes=parse_sizes("224=3,2048=1"),
        oip_batch=4,
        grpc_target="127.0.0.1:9100",
        pace_s=2.5,
    )
    again = Workload.from_env(workload.to_env())
    assert again == workload
    assert again.active_kinds() == ["predict", "oip", "slide"]
    with pytest.raises(ValueError):
        parse_sizes("4096=1")
    with pytest.raises(ValueError):
        parse_weights("predict=0,oip=0")
    with pytest.raises(ValueError):
        Workload.from_env({"TESSERA_LT_OIP_BATCH": "500"})
    with pytest.raises(ValueError, match="PACE"):
        Workload.from_env({"TESSERA_LT_PACE_S": "-1"})


def test_oip_binary_body_round_trip() -> None:
    pixels = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    body, header_length = oip_binary_body(pixels)
    header = json.loads(body[:header_length])
    assert header["inputs"][0] == {
        "name": "pixels",
        "shape": [2, 3, 8, 8],
        "datatype": "FP32",
        "parameters": {"binary_data_size": pixels.nbytes},
    }
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], np.float32).reshape(pixels.shape), pixels)
    # an answer in the same format parses back
    embedding = np.arange(6, dtype=np.float32).reshape(2, 3)
    answer_header = json.dumps(
        {
            "outputs": [
                {"name": "embedding", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}
            ]
        }
    ).encode()
    outputs = parse_oip_binary_response(answer_header + embedding.tobytes(), str(len(answer_header)))
    np.testing.assert_array_equal(outputs["embedding"], embedding)
    with pytest.raises(ValueError):
        parse_oip_binary_response(answer_header + embedding.tobytes()[:10], str(len(answer_header)))


def test_multipart_body_is_parsed_by_the_server_parser() -> None:
    import io

    from python_multipart import parse_form  # what FastAPI parses forms with

    body, content_type = multipart_body("slide", "s.tiff", b"II*\x00data", "image/tiff", {"mpp": "0.5"})
    fields: dict[str, Any] = {}
    files: dict[str, Any] = {}

    def on_field(field: Any) -> None:
        fields[field.field_name.decode()] = field.value

    def on_file(file: Any) -> None:
        files[file.field_name.decode()] = file.file_object.getvalue()

    parse_form(
        {"Content-Type": content_type.encode(), "Content-Length": str(len(body)).encode()},
        io.BytesIO(body),
        on_field,
        on_file,
    )
    assert fields == {"mpp": b"0.5"}
    assert files == {"slide": b"II*\x00data"}


def test_end_process_group_kills_what_outlives_the_session_leader() -> None:
    """What ServiceProcess.stop relies on: the service leads its own session, so processes it left
    behind (re-parented to init once it is gone) are still found by its process group and ended."""
    import signal
    import subprocess
    import time

    from loadtest.runner import end_process_group

    leader = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)
    leader.send_signal(signal.SIGKILL)  # the two sleeps outlive it
    leader.wait(timeout=10)
    started = time.monotonic()
    assert end_process_group(leader.pid, grace_s=0.5) is True
    assert time.monotonic() - started < 5
    time.sleep(0.3)
    assert end_process_group(leader.pid, grace_s=0.5) is False  # nothing left in the group now

    tidy = subprocess.Popen(["sh", "-c", "sleep 0.2 & wait"], start_new_session=True)
    assert tidy.wait(timeout=10) == 0
    assert end_process_group(tidy.pid, grace_s=2) is False  # its child exited with it: nothing to kill
