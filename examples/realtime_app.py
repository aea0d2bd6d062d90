"""A stand-in for a real-time app, for docs/guides/websockets-and-sse.md.

`python3 examples/realtime_app.py chat PORT` serves a WebSocket echo server (needs the
`websockets` package: `pip install websockets`); every message comes back as it was sent.
`python3 examples/realtime_app.py feed PORT` serves Server-Sent Events on every path (Python 3
only): `data: tick N` once a second until the client goes away.
Each prints the port it listens on (PORT 0 picks a free one) on its first line.
"""

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat(port):
    import asyncio

    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", port, max_size=None) as server:
            print(server.sockets[0].getsockname()[1], flush=True)
            await asyncio.Future()

    asyncio.run(main())


class Feed(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        n = 0
        try:
            while True:
                event = f"data: tick {n}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
                n += 1
                time.sleep(1)
        except (BrokenPipeError, ConnectionResetError):
            print("feed: client went away", file=sys.stderr, flush=True)

    def log_message(self, *args):
        pass


def feed(port):
    server = ThreadingHTTPServer(("127.0.0.1", port), Feed)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    {"chat": chat, "feed": feed}[sys.argv[1]](int(sys.argv[2]))
