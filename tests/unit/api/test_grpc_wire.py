"""``infer_request_deserializer``: a ``ModelInferRequest`` whose tensors stay views of the received
bytes, and whatever else it was sent, exactly as protobuf parses it.

tritonclient's own ``ModelInferRequest`` (the same wire format) builds the messages: the test
process cannot import the generated ``inference.*`` messages beside tritonclient's.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import tritonclient.grpc.service_pb2 as pb

from service.api.grpc_servicer import (
    MAX_SPLIT_FIELDS,
    RAW_INPUT_CONTENTS_FIELD,
    ViewedInferRequest,
    infer_request_deserializer,
    infer_request_from_proto,
    split_field,
)

deserialize = infer_request_deserializer(pb)


def _request(rng: random.Random, min_inputs: int = 0) -> Any:
    request = pb.ModelInferRequest(model_name="m" * rng.randint(0, 3), id="i" * rng.randint(0, 200))
    if rng.random() < 0.5:
        request.model_version = str(rng.randint(1, 9))
    for index in range(rng.randint(min_inputs, 3)):
        tensor = request.inputs.add(name=f"in{index}", datatype="FP32")
        tensor.shape.extend(rng.randint(1, 9) for _ in range(rng.randint(0, 4)))
        request.raw_input_contents.append(rng.randbytes(rng.randint(0, 3000)))
    if rng.random() < 0.5:
        request.parameters["big"].int64_param = rng.randint(-5, 10**12)
    if rng.random() < 0.3:
        request.outputs.add(name="out")
    return request


def _whole(received: Any) -> Any:
    """What ``deserialize`` gave, as one protobuf message (tensors copied back in)."""
    if not isinstance(received, ViewedInferRequest):
        return received
    message = pb.ModelInferRequest()
    message.CopyFrom(received.message)
    message.raw_input_contents.extend(bytes(raw) for raw in received.raw_input_contents)
    return message


def _taken_as_protobuf_takes(data: bytes) -> Any:
    """``deserialize(data)``, having checked that it takes ``data`` as protobuf does, or refuses it
    with protobuf's error (then None)."""
    try:
        expected = pb.ModelInferRequest.FromString(data)
    except Exception as exc:  # protobuf's DecodeError
        with pytest.raises(type(exc)):
            deserialize(data)
        return None
    received = deserialize(data)
    assert _whole(received) == expected
    return received


def test_the_tensors_are_views_of_the_received_bytes_and_the_rest_is_parsed() -> None:
    rng = random.Random(7)
    for _ in range(300):
        request = _request(rng, min_inputs=1)
        data = request.SerializeToString()
        received = deserialize(data)
        assert isinstance(received, ViewedInferRequest)
        assert all(raw.obj is data for raw in received.raw_input_contents)  # no copy
        assert [bytes(raw) for raw in received.raw_input_contents] == list(request.raw_input_contents)
        assert not received.message.raw_input_contents
        assert _whole(received) == request
        assert received.model_name == request.model_name and received.id == request.id


def test_corrupted_bytes_are_taken_or_refused_as_protobuf_does() -> None:
    rng = random.Random(11)
    taken = refused = 0
    for _ in range(600):
        data = bytearray(_request(rng).SerializeToString())
        for _ in range(rng.randint(1, 3)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        if data and rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        if _taken_as_protobuf_takes(bytes(data)) is None:
            refused += 1
        else:
            taken += 1
    assert taken > 50 and refused > 50  # both kinds were tried


def test_what_it_does_not_split_goes_to_protobuf_whole() -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01\x02"])
    group = _key(99, 3) + _key(99, 4)  # an empty group in an unknown field
    data = request.SerializeToString() + group
    received = deserialize(data)
    assert not isinstance(received, ViewedInferRequest)
    assert received == pb.ModelInferRequest.FromString(data) and list(received.raw_input_contents) == [b"\x01\x02"]

    as_varint = _key(RAW_INPUT_CONTENTS_FIELD, 0) + b"\x05"  # the tensors' field with the wrong wire type
    with pytest.raises(ValueError, match="plainly encoded"):
        split_field(as_varint, RAW_INPUT_CONTENTS_FIELD)
    _taken_as_protobuf_takes(as_varint)


@pytest.mark.parametrize(
    "record",
    [
        b"\xba\x80\x80\x80\x80\x00\x02ab",  # the tensors' tag in 6 bytes: protobuf refuses it
        b"\xba\x00\x02ab",  # the tag in 2 bytes: protobuf takes it
        b"\x3a\x82\x00ab",  # the length in 2 bytes: protobuf takes it
        b"\x3a\x85\x80\x80\x80\x80\x00ab",  # the length in 7 bytes: protobuf refuses it
    ],
)
def test_tensors_encoded_in_more_bytes_than_they_need_go_to_protobuf_whole(record: bytes) -> None:
    data = b"\x0a\x01m" + record  # model_name "m", then the tensor
    with pytest.raises(ValueError, match="field 7"):
        split_field(data, RAW_INPUT_CONTENTS_FIELD)
    received = _taken_as_protobuf_takes(data)
    assert not isinstance(received, ViewedInferRequest)  # refused (None), or protobuf's own message


def test_a_message_of_many_fields_goes_to_protobuf_whole() -> None:
    many = pb.ModelInferRequest(raw_input_contents=[b"x"] * (MAX_SPLIT_FIELDS + 1))
    with pytest.raises(ValueError, match="top-level fields"):
        split_field(many.SerializeToString(), RAW_INPUT_CONTENTS_FIELD)
    received = deserialize(many.SerializeToString())
    assert not isinstance(received, ViewedInferRequest) and received == many
    fewer = pb.ModelInferRequest(raw_input_contents=[b"x"] * MAX_SPLIT_FIELDS)
    assert isinstance(deserialize(fewer.SerializeToString()), ViewedInferRequest)


def test_typed_contents_are_parsed_whole() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    received = deserialize(request.SerializeToString())
    assert not isinstance(received, ViewedInferRequest) and received == request


def test_the_views_become_the_inputs_raw_data() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="pixels", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(b"\x00\x00\x80\x3f\x00\x00\x00\x40")
    data = request.SerializeToString()
    parsed = infer_request_from_proto(deserialize(data))
    (tensor,) = parsed.inputs
    assert isinstance(tensor.raw, memoryview) and tensor.raw.obj is data
    assert bytes(tensor.raw) == request.raw_input_contents[0] and tensor.shape == (1, 2)


def _key(field: int, wire: int) -> bytes:
    key, out = (field << 3) | wire, bytearray()
    while key >= 0x80:
        out.append(key & 0x7F | 0x80)
        key >>= 7
    out.append(key)
    return bytes(out)
