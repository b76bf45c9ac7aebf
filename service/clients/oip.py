"""Open Inference Protocol bodies with binary tensors, built and read by ``tritonclient``'s own
helpers (the standard OIP client's): what the load test and the service benchmark send to
``POST /v2/models/{m}/infer`` without a client object per request."""

from __future__ import annotations

import numpy as np

__all__ = ["oip_binary_body", "parse_oip_binary_response"]


def oip_binary_body(pixels: np.ndarray, outputs: tuple[str, ...] = ("embedding",)) -> tuple[bytes, int]:
    """An OIP inference body with FP32 ``pixels`` as a binary tensor; returns (body, JSON header length).

    Built by ``tritonclient``'s own encoder (the standard OIP client's). The outputs are asked for as
    binary too. Send it with the header ``Inference-Header-Content-Length: <header length>``.
    """
    from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

    tensor = InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(pixels, dtype=np.float32), binary_data=True)
    wanted = [InferRequestedOutput(name, binary_data=True) for name in outputs]
    body, header_length = InferenceServerClient.generate_request_body([tensor], outputs=wanted)
    return bytes(body), int(header_length or len(body))


def parse_oip_binary_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The outputs of an OIP answer (JSON or binary) as arrays, read by ``tritonclient``'s own parser;
    ``ValueError`` when the answer is malformed (its binary part is not the size its header announces)."""
    from tritonclient.http import InferenceServerClient

    split = int(header_length) if header_length is not None else None
    result = InferenceServerClient.parse_response_body(body, header_length=split)
    outputs = result.get_response().get("outputs") or []
    if split is not None:
        announced = sum(int((o.get("parameters") or {}).get("binary_data_size") or 0) for o in outputs)
        if announced != len(body) - split:
            raise ValueError(f"{announced} bytes of binary outputs announced, {len(body) - split} present")
    return {o["name"]: result.as_numpy(o["name"]) for o in outputs}
