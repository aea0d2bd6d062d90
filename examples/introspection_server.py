#!/usr/bin/env python3
"""A stand-in OAuth 2.0 token introspection endpoint (RFC 7662) for trying
docs/guides/oauth2-introspection.md without an authorization server of your own.

    python3 examples/introspection_server.py 9100 portico s3cret [CERT.pem KEY.pem]

Listens on 127.0.0.1:PORT (0 picks a free port; the first line on stdout says which), with
TLS when a certificate and key are given, and answers
  POST /introspect   form `token=...`, client `portico` / `s3cret` by HTTP Basic or in the form
  GET  /calls        how many introspection calls it got, as a number
Unknown client credentials get 401. Known tokens (each `tok-` and a name):
  good       active, sub alice, username alice, scope "read write", aud api, exp in 5 minutes
  readonly   active, username bob, scope "read", aud api
  writer     active, username carol, scope "write", aud api (no `read`)
  inactive   {"active": false}
  expired    active, but exp 60 seconds ago
  otheraud   active, aud ["other", "more"]
  slow       answers like `good` after 5 seconds
  garbage    200 with a body that is not JSON
Anything else is inactive. Each call is printed on stderr (the token is not).
"""
import base64
import http.server
import json
import sys
import threading
import time
import ssl
import urllib.parse


def claims(token):
    token = token[4:] if token.startswith("tok-") else ""
    now = int(time.time())
    base = {"active": True, "sub": "alice", "username": "alice", "client_id": "app",
            "scope": "read write", "aud": "api", "exp": now + 300, "token_type": "Bearer"}
    if token in ("good", "slow"):
        return base
    if token == "readonly":
        return dict(base, sub="bob", username="bob", scope="read")
    if token == "writer":
        return dict(base, sub="carol", username="carol", scope="write")
    if token == "expired":
        return dict(base, exp=now - 60)
    if token == "otheraud":
        return dict(base, aud=["other", "more"])
    return {"active": False}


class Endpoint(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, status, body, kind="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/calls":
            self.send(200, str(self.server.calls), "text/plain")
        else:
            self.send(404, "{}")

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        with self.server.lock:
            self.server.calls += 1
        client = (form.get("client_id", [None])[0], form.get("client_secret", [None])[0])
        auth = self.headers.get("authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            client = (urllib.parse.unquote(user), urllib.parse.unquote(password))
        how = "basic" if auth else "post"
        sys.stderr.write(f"introspection call {self.server.calls} ({how} client auth)\n")
        if self.path != "/introspect":
            return self.send(404, "{}")
        if client != self.server.client:
            return self.send(401, '{"error":"invalid_client"}')
        if form.get("token_type_hint", [""])[0] != "access_token":
            return self.send(400, '{"error":"invalid_request"}')
        token = form.get("token", [""])[0]
        if token == "tok-slow":
            time.sleep(5)
        if token == "tok-garbage":
            return self.send(200, "not json", "text/plain")
        self.send(200, json.dumps(claims(token)))

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9100
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Endpoint)
    server.daemon_threads = True
    server.client = (sys.argv[2] if len(sys.argv) > 2 else "portico",
                     sys.argv[3] if len(sys.argv) > 3 else "s3cret")
    server.calls = 0
    if len(sys.argv) > 5:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(sys.argv[4], sys.argv[5])
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.lock = threading.Lock()
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
