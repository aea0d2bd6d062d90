#!/usr/bin/env python3
"""A stand-in app for the compression guide (docs/guides/compression.md).

    python3 examples/compression_app.py 9001

Listens on 127.0.0.1:PORT (0: any free port), prints the port on its first line, and answers:
  GET /api/items   200 a JSON list of 500 items (about 30 KB), with an ETag
  GET /logo.png    200 8 KB of image/png (already compressed: passed as it is)
  GET /events      200 text/event-stream: five events, 200 ms apart
  POST /upload     200 "received N bytes": the length of the body it got
"""
import http.server
import json
import sys
import time

ITEMS = json.dumps(
    {"items": [{"id": i, "name": f"item number {i}", "price": i * 7 % 1000} for i in range(500)]}
).encode()


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, status, headers, body):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/api/items":
            self.send(200, {"content-type": "application/json", "etag": '"items-v1"'}, ITEMS)
        elif self.path == "/logo.png":
            self.send(200, {"content-type": "image/png"}, bytes(range(256)) * 32)
        elif self.path == "/events":
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(5):
                event = f"data: tick {i}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send(404, {"content-type": "text/plain"}, b"not found")

    do_HEAD = do_GET

    def do_POST(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
        encoding = self.headers.get("content-encoding", "none")
        text = f"received {len(body)} bytes, content-encoding {encoding}\n".encode()
        self.send(200, {"content-type": "text/plain"}, text)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), App)
    print(server.server_address[1], flush=True)
    server.serve_forever()
