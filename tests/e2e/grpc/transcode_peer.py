"""A real gRPC server (grpcio) for the gRPC-JSON transcoding tests: shop.proto's Shop.

`python3 transcode_peer.py` serves on 127.0.0.1:0 and prints its port;
`python3 transcode_peer.py call ADDR NAME` calls GetBook through ADDR as a gRPC client and
prints the book's id and title. Every answer tells
what the server received, so the tests see what portico made of the JSON request.
"""

import os
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = tempfile.mkdtemp(prefix="portico-transcode-")
INCLUDE = os.path.join(os.path.dirname(protoc.__file__), "_proto")
if protoc.main(["protoc", f"-I{HERE}", f"-I{INCLUDE}", f"--python_out={OUT}",
                f"--grpc_python_out={OUT}", "http_rule.proto", "shop.proto"]) != 0:
    sys.exit("protoc failed")
sys.path.insert(0, OUT)
from google.protobuf import json_format  # noqa: E402
import shop_pb2 as pb  # noqa: E402
import shop_pb2_grpc as rpc  # noqa: E402


def seen(req):
    """The request as the server got it, in JSON, for the tests to check."""
    return json_format.MessageToJson(req, indent=None, sort_keys=True)


class Shop(rpc.ShopServicer):
    def GetBook(self, req, ctx):
        return pb.Book(id=req.name, title="Dune", tags=list(req.tags), note=seen(req))

    def GetTitle(self, req, ctx):
        return pb.Book(id=req.name, title="title of " + req.name)

    def CreateBook(self, req, ctx):
        book = pb.Book()
        book.CopyFrom(req.book)
        book.shelf = req.parent
        book.note = seen(req)
        return book

    def UpdateBook(self, req, ctx):
        book = pb.Book()
        book.CopyFrom(req.book)
        book.note = seen(req)
        return book

    def SearchBooks(self, req, ctx):
        return pb.Book(id=req.name, note="search")

    def ListBooks(self, req, ctx):
        for i in range(req.count):
            if req.fail_after and i == req.fail_after:
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "shelf went away")
            yield pb.Book(id=f"{req.parent}/books/{i}", page_count=i)
            time.sleep(0.01)

    def Fail(self, req, ctx):
        ctx.abort(getattr(grpc.StatusCode, req.code), req.message)

    def Everything(self, req, ctx):
        return req


def main():
    s = grpc.server(futures.ThreadPoolExecutor(8))
    rpc.add_ShopServicer_to_server(Shop(), s)
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    print(port, flush=True)
    try:
        sys.stdin.read()
    finally:
        s.stop(0)


def call(addr, name):
    with grpc.insecure_channel(addr) as channel:
        book = rpc.ShopStub(channel).GetBook(pb.GetBookRequest(name=name), timeout=10)
    print(book.id, book.title, flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["call"]:
        call(sys.argv[2], sys.argv[3])
    else:
        main()
