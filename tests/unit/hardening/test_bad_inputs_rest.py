"""The bad-input corpus through the REST app in process: every case is a 4xx that says what was
wrong, never a 5xx, never a hang. Resource attacks (decompression bombs, a TIFF with 100,000
pages) must be refused or served within bounded time and memory."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.oip import pack_bytes
from service.runtime.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from tests.unit.hardening.corpus import (
    INFER,
    Case,
    ImageCase,
    body_cases,
    image_cases,
    oip_cases,
    png_zeros_bomb,
    slide_cases,
    tiff_ifd_chain,
)
from tests.unit.hardening.support import LIMITS

#: No case may take longer than this (seconds) to be answered.
ANSWER_WITHIN_S = 20.0

IMAGES = image_cases()
#: Image cases whose fault is in the bytes, not in a Content-Type (OIP's image input carries none).
BYTE_FAULTS = [c for c in IMAGES if c.statuses != frozenset({415}) and "content type says" not in c.says]
REQUESTS = body_cases() + oip_cases() + slide_cases()


def _param(case: Case | ImageCase) -> Any:
    xfail = getattr(case, "xfail", None)
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def error_message(response: httpx.Response) -> str:
    """The message of either envelope: ``/v1`` ``{"error": {"message", "param"}}`` (the parameter at
    fault counts as part of what the error says), OIP ``{"error": "..."}``."""
    body = response.json()
    error = body["error"]
    if isinstance(error, dict):
        return f"{error['message']} (param: {error.get('param')})"
    return str(error)


def assert_clean_4xx(response: httpx.Response, statuses: frozenset[int], says: tuple[str, ...], elapsed: float) -> None:
    assert elapsed < ANSWER_WITHIN_S, f"answered after {elapsed:.1f} s"
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    assert response.status_code in statuses, f"{response.status_code}: {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json")
    message = error_message(response)
    assert message.strip(), "empty error message"
    if says:
        assert any(s.lower() in message.lower() for s in says), f"message {message!r} does not say any of {says}"


def send(client: TestClient, case: Case) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    if case.method == "GET":
        response = client.get(case.path, headers=case.headers)
    elif case.files is not None:
        response = client.post(case.path, files=case.files, headers=case.headers)
    elif case.json_body is not None:
        response = client.post(case.path, json=case.json_body, headers=case.headers)
    else:
        content = case.body() if callable(case.body) else case.body
        response = client.post(case.path, content=content, headers=case.headers)
    return response, time.perf_counter() - start


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [_param(c) for c in IMAGES])
def test_bad_image_as_body_is_a_clear_4xx(client: TestClient, case: ImageCase) -> None:
    headers = {"content-type": case.content_type} if case.content_type else {}
    start = time.perf_counter()
    response = client.post("/v1/predict", content=case.data, headers=headers)
    assert_clean_4xx(response, case.statuses, case.says, time.perf_counter() - start)
    assert response.json()["error"]["code"] in ("invalid_argument", "too_large", "unsupported_media_type")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [_param(c) for c in IMAGES])
def test_bad_image_as_multipart_is_a_clear_4xx(client: TestClient, case: ImageCase) -> None:
    part = ("upload", case.data, case.content_type) if case.content_type else ("upload", case.data)
    start = time.perf_counter()
    response = client.post("/v1/predict", files={"image": part})
    assert_clean_4xx(response, case.statuses, case.says, time.perf_counter() - start)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [_param(c) for c in BYTE_FAULTS])
def test_bad_image_as_oip_bytes_input_is_a_clear_4xx(client: TestClient, case: ImageCase) -> None:
    payload = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(case.data).decode()]}]
    }
    start = time.perf_counter()
    response = client.post(INFER, content=json.dumps(payload), headers={"content-type": "application/json"})
    assert_clean_4xx(response, case.statuses, case.says, time.perf_counter() - start)
    assert isinstance(response.json()["error"], str)  # the OIP envelope


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [_param(c) for c in REQUESTS])
def test_bad_request_is_a_clear_4xx(client: TestClient, case: Case) -> None:
    response, elapsed = send(client, case)
    assert_clean_4xx(response, case.statuses, case.says, elapsed)


# -- resource attacks ---------------------------------------------------------------------------------
BOMB_SIDE = 4000  # 16.0 Mpx: just under the 4096 x 4096 pixel limit
BOMB_INFLATED = 4 << 30  # the IDAT stream inflates to 4 GiB of zeros


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_png_whose_idat_inflates_to_gigabytes_stays_within_bounded_memory(client: TestClient) -> None:
    """A valid PNG that claims 4000x4000 (under the limit) but whose IDAT inflates to 4 GiB.

    Sent as the OIP ``image`` input (binary extension), which decodes and fits it to the model's
    native 224 px without routing, so the memory measured is the decoder's, not a large model's.
    The decoder must stop at the pixels the header claims: the process may grow by a few copies
    of the 48 MB image, never by anything like the inflated stream.
    """
    bomb = png_zeros_bomb(BOMB_SIDE, BOMB_SIDE, BOMB_INFLATED)
    assert len(bomb) < LIMITS.max_bytes  # under the body limit: the decoder itself is what is attacked
    raw = pack_bytes([bomb])
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    if not reset_peak_rss():
        pytest.skip("this kernel cannot reset the peak RSS (clear_refs)")
    before = current_rss_bytes()
    start = time.perf_counter()
    response = client.post(INFER, content=header + raw, headers=headers)
    elapsed = time.perf_counter() - start
    growth = peak_rss_bytes() - before
    decoded = BOMB_SIDE * BOMB_SIDE * 3
    print(
        f"\nPNG bomb ({len(bomb) / 1e6:.1f} MB inflating to {BOMB_INFLATED / 2**30:.0f} GiB, {BOMB_SIDE}x{BOMB_SIDE}): "
        f"status {response.status_code}, peak RSS growth {growth / 2**20:.0f} MiB "
        f"({growth / decoded:.1f}x the decoded image), {elapsed:.1f} s"
    )
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text[:300]
    if response.status_code == 200:
        assert response.json()["outputs"][0]["shape"] == [1, 384]
    assert growth < BOMB_INFLATED / 4, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    assert growth < 10 * decoded, f"peak RSS grew by {growth / 2**20:.0f} MiB for a {decoded / 2**20:.0f} MiB image"
    assert elapsed < ANSWER_WITHIN_S


@pytest.mark.timeout(60)
def test_tiff_with_100000_pages_is_answered_quickly(client: TestClient) -> None:
    """11 MB of linked TIFF directories: counting pages walked them quadratically (75 s before the fix)."""
    data = tiff_ifd_chain(100_000)
    assert len(data) < LIMITS.max_bytes
    start = time.perf_counter()
    response = client.post("/v1/predict?model=vit_small", content=data, headers={"content-type": "image/tiff"})
    elapsed = time.perf_counter() - start
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text[:300]
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_corpus_size() -> None:
    """The counts docs/reliability.md reports; fails if the corpus shrinks by accident."""
    counts = {
        "image faults (as body, as multipart)": len(IMAGES),
        "image faults (as OIP BYTES input)": len(BYTE_FAULTS),
        "body/option faults": len(body_cases()),
        "OIP request faults": len(oip_cases()),
        "slide faults": len(slide_cases()),
    }
    total = 2 * len(IMAGES) + len(BYTE_FAULTS) + len(REQUESTS) + 2
    print("\n" + "\n".join(f"{k}: {v}" for k, v in counts.items()) + f"\nREST requests in all: {total}")
    assert len(IMAGES) >= 60 and len(oip_cases()) >= 50 and len(slide_cases()) >= 30
