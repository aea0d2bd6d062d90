"""Real gRPC peers (grpcio) for the e2e tests.

`python3 peers.py server [CERT KEY]` starts an Echo server (and the standard grpc.health.v1
service, answered by hand) on 127.0.0.1, on port $PORT or any free one, over TLS when given a
certificate, and prints its port. `python3 peers.py client ADDR CALLS [CA NAME]` makes the calls given as JSON (over TLS
trusting CA, for server name NAME, when given) and prints one JSON result per call.
"""

import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = tempfile.mkdtemp(prefix="portico-grpc-")
if protoc.main(["protoc", f"-I{HERE}", f"--python_out={OUT}", f"--grpc_python_out={OUT}",
                os.path.join(HERE, "echo.proto")]) != 0:
    sys.exit("protoc failed")
sys.path.insert(0, OUT)
import echo_pb2 as pb  # noqa: E402
import echo_pb2_grpc as rpc  # noqa: E402

SERVING = {"value": True}


class Echo(rpc.EchoServicer):
    def Unary(self, req, ctx):
        if req.text == "fail":
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if req.text == "slow":
            time.sleep(3)
        if req.text == "sick":
            SERVING["value"] = False
        if req.text == "well":
            SERVING["value"] = True
        ctx.set_trailing_metadata((("x-trailer", "yes"),))
        remaining = ctx.time_remaining()
        return pb.Msg(text=f"echo:{req.text}", n=req.n,
                      remaining_ms=-1 if remaining is None or remaining > 1e6
                      else int(remaining * 1000))

    def ClientStream(self, it, ctx):
        msgs = list(it)
        return pb.Msg(text=",".join(m.text for m in msgs), n=len(msgs))

    def ServerStream(self, req, ctx):
        for i in range(req.n):
            if req.text == "trickle":
                time.sleep(0.05)
            yield pb.Msg(text=req.text, n=i)

    def Bidi(self, it, ctx):
        for m in it:
            yield pb.Msg(text="re:" + m.text, n=m.n)


def health_check(request, ctx):
    # HealthCheckRequest { service = 1 }: the whole server ("") and test.Echo are known, other
    # services are NOT_FOUND, as grpc.health.v1 says.
    service = request[2:].decode() if request[:1] == b"\x0a" else ""
    if service not in ("", "test.Echo"):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    # HealthCheckResponse { status = 1: SERVING | 2: NOT_SERVING }
    return b"\x08\x01" if SERVING["value"] else b"\x08\x02"


def server(tls):
    s = grpc.server(futures.ThreadPoolExecutor(16))
    rpc.add_EchoServicer_to_server(Echo(), s)
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(health_check)}),))
    addr = "127.0.0.1:" + os.environ.get("PORT", "0")
    if tls:
        cert, key = (open(f, "rb").read() for f in tls)
        port = s.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = s.add_insecure_port(addr)
    s.start()
    print(port, flush=True)
    # Ends with its parent: stdin closes when the test drops the process.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    s.wait_for_termination()


def client(addr, calls, tls):
    if tls:
        ca, name = tls
        creds = grpc.ssl_channel_credentials(open(ca, "rb").read())
        channel = grpc.secure_channel(addr, creds,
                                      options=(("grpc.ssl_target_name_override", name),))
    else:
        channel = grpc.insecure_channel(addr)
    stub = rpc.EchoStub(channel)
    for call in calls:
        kind, text, n = call["kind"], call.get("text", ""), call.get("n", 0)
        timeout = call.get("timeout", 10)
        md = tuple(call.get("metadata", {}).items())
        out = {"kind": kind}
        try:
            if kind == "unary":
                path = call.get("path", "/test.Echo/Unary")
                method = channel.unary_unary(path, request_serializer=pb.Msg.SerializeToString,
                                             response_deserializer=pb.Msg.FromString)
                reply, c = method.with_call(pb.Msg(text=text, n=n), timeout=timeout, metadata=md)
                out.update(text=reply.text, n=reply.n, remaining_ms=reply.remaining_ms,
                           trailers=dict(c.trailing_metadata() or ()))
            elif kind == "client_stream":
                reply = stub.ClientStream(iter([pb.Msg(text=str(i)) for i in range(n)]),
                                          timeout=timeout, metadata=md)
                out.update(text=reply.text, n=reply.n)
            elif kind == "server_stream":
                stream = stub.ServerStream(pb.Msg(text=text, n=n), timeout=timeout, metadata=md)
                got = []
                for m in stream:
                    got.append(m.n)
                    if call.get("cancel_after") == len(got):
                        stream.cancel()
                        break
                out.update(items=got)
            elif kind == "bidi":
                replies = stub.Bidi(iter([pb.Msg(text=str(i), n=i) for i in range(n)]),
                                    timeout=timeout, metadata=md)
                out.update(items=[m.text for m in replies])
            out["code"] = "OK"
        except grpc.RpcError as e:
            out.update(code=e.code().name, details=e.details())
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2:4])
    else:
        client(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:6])
