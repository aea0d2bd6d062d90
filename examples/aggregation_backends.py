#!/usr/bin/env python3
"""Stand-ins for the three services of examples/aggregation.yaml (Python 3, no packages).

    python3 examples/aggregation_backends.py

Listens on 127.0.0.1:9001, 9002 and 9003; each port answers every path:
  GET /users/ID        {"id": ID, "name": "Ada", "secret": "s3", "address": {...}, "favourite": "A1"}
  GET /orders?user=ID  a JSON array of two orders (500 for user 13: "the orders db is down")
  GET /items/A1        <item sku="A1"><name>Desk lamp</name><stock>3</stock></item> (XML)
Each request is printed on stderr. Stop it with Ctrl-C.
"""
import http.server
import json
import sys
import threading
import urllib.parse


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        sys.stderr.write(f"{self.server.server_port} got GET {self.path}\n")
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        status, ctype, headers, body = 404, "text/plain", {}, "no"
        if url.path.startswith("/users/"):
            uid = url.path[len("/users/"):]
            ctype, status = "application/json", 200
            headers = {"cache-control": "max-age=60"}
            body = json.dumps({"id": uid, "name": "Ada", "secret": "s3",
                               "address": {"city": "Paris", "zip": "75001"}, "favourite": "A1"})
        elif url.path == "/orders":
            user = query.get("user", [""])[0]
            if user == "13":
                status, body = 500, "orders db at 10.1.2.3 is down"
            else:
                ctype, status = "application/json", 200
                body = json.dumps([{"order": 1, "user": user, "internal": True},
                                   {"order": 2, "user": user, "internal": True}])
        elif url.path == "/items/A1":
            ctype, status = "application/xml", 200
            body = '<item sku="A1"><name>Desk lamp</name><stock>3</stock></item>'
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", port), Backend)
               for port in (9001, 9002, 9003)]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening on 127.0.0.1:9001, 9002 and 9003", flush=True)
    servers[0].serve_forever()
