#!/usr/bin/env python3
"""A stand-in app for trying the guides in docs/guides/ without an app of your own.

    python3 examples/demo_app.py 9001 app1

Listens on 127.0.0.1:PORT and answers:
  GET /healthz      200 "ok" (for health checks)
  GET /json         200 {"secret":"s","user":{"mail":"a@b"},"n":1} (application/json)
  GET /status/CODE  CODE, empty body
  anything else     200 "NAME PATH?QUERY", with the header `x-upstream: NAME`
Each request it receives (but health checks) is printed on stderr with its headers, so you can see what
portico sent. Stop it with Ctrl-C.
"""
import http.server
import sys


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        name = self.server.app_name
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        if path != "/healthz":
            sys.stderr.write(f"{name} got {self.command} {self.path}\n")
            for key, value in self.headers.items():
                sys.stderr.write(f"  {key.lower()}: {value}\n")
        status, headers, body = 200, {"x-upstream": name}, f"{name} {self.path}"
        if path == "/healthz":
            headers, body = {}, "ok"
        elif path == "/json":
            headers = {"content-type": "application/json", "x-internal": "1"}
            body = '{"secret":"s","user":{"mail":"a@b"},"n":1}'
        elif path.startswith("/status/"):
            status, headers, body = int(path[len("/status/"):]), {}, ""
        data = body.encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), App)
    server.app_name = sys.argv[2] if len(sys.argv) > 2 else f"app-{port}"
    print(f"{server.app_name} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
