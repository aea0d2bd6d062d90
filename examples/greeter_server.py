"""A gRPC Greeter (examples/greeter.proto) for examples/grpc-json.yaml.

    python3 -m pip install grpcio grpcio-tools
    python3 examples/greeter_server.py 50051

Serves plain gRPC (h2c) on 127.0.0.1:PORT (0 picks a free port; the port is printed). An
empty name is refused with INVALID_ARGUMENT, the name `nobody` with NOT_FOUND.
"""

import os
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = tempfile.mkdtemp(prefix="greeter-")
INCLUDE = os.path.join(os.path.dirname(protoc.__file__), "_proto")
for proto in ("google/api/http.proto", "google/api/annotations.proto", "greeter.proto"):
    if protoc.main(["protoc", f"-I{HERE}", f"-I{INCLUDE}", f"--python_out={OUT}",
                    f"--grpc_python_out={OUT}", proto]) != 0:
        sys.exit("protoc failed")
sys.path.insert(0, OUT)
import greeter_pb2 as pb  # noqa: E402
import greeter_pb2_grpc as rpc  # noqa: E402

# Fixed, so that the guide's outputs are the same on every run.
AT = "2025-01-02T03:04:05Z"


def reply(text):
    r = pb.HelloReply(message=text)
    r.at.FromJsonString(AT)
    return r


class Greeter(rpc.GreeterServicer):
    def SayHello(self, req, ctx):
        if not req.name:
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        if req.name == "nobody":
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no one called nobody")
        return reply(f"Hello, {req.name}!")

    def StreamHellos(self, req, ctx):
        for i in range(req.count or 1):
            yield reply(f"Hello #{i + 1}, {req.name}!")
            time.sleep(0.05)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 50051
    s = grpc.server(futures.ThreadPoolExecutor(8))
    rpc.add_GreeterServicer_to_server(Greeter(), s)
    port = s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    print(port, flush=True)
    s.wait_for_termination()


if __name__ == "__main__":
    main()
