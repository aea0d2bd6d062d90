"""Real WebSocket peers (Python `websockets`) for the e2e tests.

`python3 peer.py server LOG` serves an echo server on 127.0.0.1:0 and prints its port. Every
message is echoed back as it came (text or binary); the text `headers` is answered with the
request's header fields as JSON. The subprotocol `chat` is chosen when offered. Each
connection appends `open` to the file LOG, and `close CODE` when it ends.

`python3 peer.py client URL` connects (offering `chat`, sending `x-api-key: secret` when
$WS_KEY is set) and prints `open SUBPROTOCOL`, then runs commands read from stdin, one a line,
printing one line for each:

- `exchange`: text, binary, ping/pong, a fragmented and a 16 MiB message; prints JSON.
- `echo TEXT`: sends TEXT and prints `echo REPLY`.
- `headers`: prints the upstream's view of the request headers as JSON.
- `wait_close`: waits (up to 30 s) for the connection to close; prints `closed CODE`.
"""

import asyncio
import json
import os
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


def note(line):
    with open(sys.argv[2], "a", encoding="utf-8") as log:
        log.write(line + "\n")


async def echo(ws):
    note("open")
    try:
        async for message in ws:
            if message == "headers":
                await ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
            else:
                await ws.send(message)
    except ConnectionClosed:
        pass
    await ws.wait_closed()
    note(f"close {ws.close_code}")


async def server():
    async with serve(echo, "127.0.0.1", 0, max_size=None, subprotocols=["chat"],
                     compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def exchange(ws):
    result = {}
    await ws.send("hello")
    result["text"] = await ws.recv() == "hello"
    blob = bytes(range(256)) * 4
    await ws.send(blob)
    result["binary"] = await ws.recv() == blob
    pong = await ws.ping(b"are you there")
    latency = await asyncio.wait_for(pong, 10)
    result["ping"] = latency >= 0
    await ws.send(["frag", "ment", "ed"])
    result["fragmented"] = await ws.recv() == "fragmented"
    big = os.urandom(16 * 1024 * 1024)
    await ws.send(big)
    result["big"] = await ws.recv() == big
    return result


async def client(url):
    headers = {"x-api-key": os.environ["WS_KEY"]} if os.environ.get("WS_KEY") else {}
    try:
        ws = await connect(url, subprotocols=["chat"], additional_headers=headers,
                           max_size=None, compression=None, open_timeout=10)
    except Exception as err:  # noqa: BLE001 - the test reads the refusal
        print(f"refused {getattr(getattr(err, 'response', None), 'status_code', err)}",
              flush=True)
        return
    print(f"open {ws.subprotocol}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command, _, arg = line.strip().partition(" ")
        try:
            if command == "exchange":
                print(json.dumps(await asyncio.wait_for(exchange(ws), 60)), flush=True)
            elif command == "echo":
                await ws.send(arg)
                print(f"echo {await asyncio.wait_for(ws.recv(), 20)}", flush=True)
            elif command == "headers":
                await ws.send("headers")
                print(await asyncio.wait_for(ws.recv(), 20), flush=True)
            elif command == "wait_close":
                try:
                    await asyncio.wait_for(ws.wait_closed(), 30)
                    print(f"closed {ws.close_code}", flush=True)
                except asyncio.TimeoutError:
                    print("still open", flush=True)
        except ConnectionClosed:
            print(f"closed {ws.close_code}", flush=True)
        except asyncio.TimeoutError:
            print("timeout", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        asyncio.run(client(sys.argv[2]))
