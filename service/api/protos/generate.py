"""Regenerate the Python modules of the protos in this folder (run after editing a .proto).

    python service/api/protos/generate.py            # rewrite the committed modules
    python service/api/protos/generate.py --out DIR  # write them under DIR instead

This runs ``python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=.
service/api/protos/*.proto`` from the repository root, so the modules import each other as
``service.api.protos.<name>_pb2`` (the name Ray Serve's gRPC proxy unpickles them under).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["GENERATED_SUFFIXES", "PROTO_DIR", "REPO_ROOT", "generate", "generated_names"]

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parents[2]
#: What protoc writes for each ``<name>.proto``.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_names() -> list[str]:
    """File names of every generated module, for every proto in this folder."""
    return sorted(f"{p.stem}{suffix}" for p in PROTO_DIR.glob("*.proto") for suffix in GENERATED_SUFFIXES)


def generate(out: Path = REPO_ROOT) -> list[Path]:
    """Run protoc on every proto here; writes ``out/service/api/protos/*`` and returns those paths."""
    from grpc_tools import protoc

    protos = sorted(p.relative_to(REPO_ROOT).as_posix() for p in PROTO_DIR.glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files in {PROTO_DIR}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        *(str(REPO_ROOT / p) for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")
    target = out / PROTO_DIR.relative_to(REPO_ROOT)
    return [target / name for name in generated_names()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="Root to write under (default: the repository).")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
