"""The generated gRPC code is current, and our OIP proto is the standard one on the wire."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from service.api.protos import generate
from tests.helpers import ROOT

OIP_PROTO = "service/api/protos/grpc_predict_v2.proto"
MODEL_CONFIG_PROTO = "service/api/protos/model_config.proto"


def test_generated_code_is_current(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert {p.name for p in written} == set(generate.generated_names())
    for path in written:
        committed = generate.PROTO_DIR / path.name
        assert committed.exists(), f"{committed} is missing: run python service/api/protos/generate.py"
        assert committed.read_text() == path.read_text(), (
            f"{committed.name} is stale: run python service/api/protos/generate.py and commit the result"
        )


def _messages(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message (nested ones too) by its full name."""
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            found[name] = message
            walk(name, list(message.nested_type))

    walk(f".{proto.package}", list(proto.message_type))
    return found


def test_oip_messages_match_tritons_on_the_wire(tmp_path: Path) -> None:
    from grpc_tools import protoc
    from tritonclient.grpc import service_pb2

    out = tmp_path / "oip.pb"
    assert protoc.main(["protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", str(ROOT / OIP_PROTO)]) == 0
    ours = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    assert ours.package == theirs.package == "inference"

    standard = _messages(theirs)
    mine = _messages(ours)
    assert len(mine) >= 20
    for name, message in mine.items():
        assert name in standard, f"{name} is not in Triton's proto"
        fields = {f.name: (f.number, f.type, f.label, f.type_name) for f in standard[name].field}
        for field in message.field:
            assert fields.get(field.name) == (field.number, field.type, field.label, field.type_name), (
                f"{name}.{field.name} differs from the standard"
            )
        assert {f.name for f in message.field} == set(fields), f"{name} has different fields"

    (service,) = ours.service
    standard_rpcs = {
        m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming) for m in theirs.service[0].method
    }
    assert service.name == theirs.service[0].name == "GRPCInferenceService"
    for method in service.method:
        assert standard_rpcs[method.name] == (
            method.input_type,
            method.output_type,
            method.client_streaming,
            method.server_streaming,
        )
    assert {m.name for m in service.method} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }


def test_model_config_messages_match_tritons_on_the_wire(tmp_path: Path) -> None:
    """Our subset of model_config.proto: every message, field, enum value as Triton numbers them."""
    from grpc_tools import protoc
    from tritonclient.grpc import model_config_pb2

    out = tmp_path / "config.pb"
    assert protoc.main(["protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", str(ROOT / MODEL_CONFIG_PROTO)]) == 0
    ours = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    theirs = descriptor_pb2.FileDescriptorProto()
    model_config_pb2.DESCRIPTOR.CopyToProto(theirs)
    assert ours.package == theirs.package == "inference"
    standard, mine = _messages(theirs), _messages(ours)
    assert {".inference.ModelConfig", ".inference.ModelInput", ".inference.ModelInstanceGroup"} <= set(mine)
    for name, message in mine.items():
        assert name in standard, f"{name} is not in Triton's model_config.proto"
        fields = {f.name: (f.number, f.type, f.label, f.type_name) for f in standard[name].field}
        for field in message.field:
            assert fields.get(field.name) == (field.number, field.type, field.label, field.type_name), (
                f"{name}.{field.name} differs from Triton's"
            )
        their_enums = {e.name: {v.name: v.number for v in e.value} for e in standard[name].enum_type}
        for enum in message.enum_type:
            assert {v.name: v.number for v in enum.value}.items() <= their_enums[enum.name].items()
    their_types = {v.name: v.number for v in theirs.enum_type[0].value}
    assert {v.name: v.number for v in ours.enum_type[0].value} == their_types


def test_importing_the_servicers_leaves_the_oip_messages_unloaded() -> None:
    """tritonclient.grpc and grpc_predict_v2_pb2 cannot share a process: importing ours must stay lazy."""
    code = (
        "import sys, service.api.grpc_servicer, service.serve.grpc_options as g; "
        "assert g.servicer_functions(); "
        "assert not [m for m in sys.modules if m.startswith('service.api.protos.grpc_predict')], 'eager import'; "
        "import tritonclient.grpc"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
