#!/usr/bin/env python3
"""A stand-in auth service for `forward_auth`, for trying docs/guides/forward-auth.md
without one of your own.

    python3 examples/forward_auth_server.py 9200

Listens on 127.0.0.1:PORT (0 picks a free port; the first line on stdout says which) and
decides every request portico describes to it (any path but the two below):
  Authorization: Bearer tok-alice    200, X-User: alice
  Authorization: Bearer tok-bob      200, X-User: bob
  Cookie: session=alice-session      200, X-User: alice
  Authorization: Bearer tok-big      401 with a 100 KiB body
  anything else, Accept: text/html   302 to http://login.example/login?rd=<the original URL>
  anything else                      401, WWW-Authenticate: Bearer realm="example", JSON body
Paths under /admin (from X-Forwarded-Uri) are for alice only: others get 403.
  GET /_calls   how many checks it got, as a number
  GET /_last    the last check as JSON: method, path, headers
Each check is printed on stderr (no credential is).
"""
import http.server
import json
import sys
import threading
import urllib.parse

USERS = {"Bearer tok-alice": "alice", "Bearer tok-bob": "bob"}
SESSIONS = {"alice-session": "alice"}


class AuthService(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def user(self):
        auth = self.headers.get("authorization", "")
        if auth in USERS:
            return USERS[auth]
        for part in self.headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "session" and value in SESSIONS:
                return SESSIONS[value]
        return None

    def check(self):
        with self.server.lock:
            self.server.calls += 1
            self.server.last = {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
            }
        uri = self.headers.get("x-forwarded-uri", "/")
        sys.stderr.write(
            f"check {self.server.calls}: {self.headers.get('x-forwarded-method')} {uri}\n"
        )
        if self.headers.get("authorization") == "Bearer tok-big":
            return self.answer(401, b"x" * (100 * 1024), [("content-type", "text/plain")])
        user = self.user()
        if user is None:
            if "text/html" in self.headers.get("accept", ""):
                original = "{}://{}{}".format(
                    self.headers.get("x-forwarded-proto", "http"),
                    self.headers.get("x-forwarded-host", ""),
                    uri,
                )
                target = "http://login.example/login?rd=" + urllib.parse.quote(original, safe="")
                return self.answer(302, b"", [("location", target)])
            body = json.dumps({"error": "unauthorized", "message": "sign in first"}).encode()
            return self.answer(
                401,
                body,
                [
                    ("www-authenticate", 'Bearer realm="example"'),
                    ("content-type", "application/json"),
                    ("x-auth-debug", "not for clients"),
                ],
            )
        if uri.startswith("/admin") and user != "alice":
            return self.answer(403, b"admins only\n", [("content-type", "text/plain")])
        return self.answer(204, b"", [("x-user", user), ("x-auth-debug", "not for upstreams")])

    def do_GET(self):
        if self.path == "/_calls":
            return self.answer(200, str(self.server.calls).encode())
        if self.path == "/_last":
            with self.server.lock:
                body = json.dumps(self.server.last).encode()
            return self.answer(200, body, [("content-type", "application/json")])
        self.check()

    do_HEAD = check
    do_POST = check
    do_PUT = check
    do_PATCH = check
    do_DELETE = check
    do_OPTIONS = check

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9200
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), AuthService)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.calls = 0
    server.last = None
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
