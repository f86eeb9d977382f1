"""Regenerate api_pb2.py and api_pb2_grpc.py from api.proto (a dev-time step; the agent needs
only grpcio and protobuf at run time, not grpcio-tools):

    pip install grpcio-tools
    python agent/podresources_pb/regenerate.py

protoc names imports after the path a .proto has under its include root, and the gRPC plugin
writes `import api_pb2` for a bare `api.proto`, which fails inside a package. So the file is
linked into a scratch tree as gpufleet/agent/podresources_pb/api.proto (the name it is installed
under) and the output copied back here.

The generated code checks at import that the installed protobuf is at least the version that
generated it (and grpcio at least grpcio-tools'): keep pyproject's lower bounds in step.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = Path("gpufleet", "agent", "podresources_pb")
OUTPUTS = ("api_pb2.py", "api_pb2_grpc.py")


def main() -> int:
    from grpc_tools import protoc  # dev-time only: not a dependency of the agent

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / PACKAGE).mkdir(parents=True)
        shutil.copy(HERE / "api.proto", root / PACKAGE / "api.proto")
        out = root / "out"
        out.mkdir()
        argv = ["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}", str(PACKAGE / "api.proto")]
        code = protoc.main(argv)
        if code != 0:
            print(f"protoc failed ({code})", file=sys.stderr)
            return code
        for name in OUTPUTS:
            shutil.copy(out / PACKAGE / name, HERE / name)
            print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
