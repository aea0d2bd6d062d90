#!/usr/bin/env python3
"""Idle keep-alive connection client for bench/compare.sh (stdlib only).

Opens N HTTP/1.1 keep-alive connections to HOST:PORT, sends one `GET PATH` on each and reads
the whole response, then holds every connection open and idle.  When all are established it
prints `ready OK_COUNT` on stdout (flushed).  It then waits until SIGTERM/SIGINT (or --hold
seconds), prints `held STILL_OPEN CLOSED_BY_PEER` and exits, closing the connections.

Everything is bounded in time: --connect-timeout for the whole set-up phase, --hold for the
idle phase.
"""

import argparse
import asyncio
import signal
import sys


async def one(host, port, path, sem, timeout):
    """Connect, do one GET, read the full response; return (reader, writer) or None."""
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout
            )
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length is None or not head.startswith(b"HTTP/1.1 200"):
                writer.close()
                return None
            await asyncio.wait_for(reader.readexactly(length), timeout)
            return reader, writer
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            writer.close()
            return None


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("-n", "--conns", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=100, help="connections set up at once")
    ap.add_argument("--connect-timeout", type=float, default=60.0)
    ap.add_argument("--hold", type=float, default=120.0)
    args = ap.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    sem = asyncio.Semaphore(args.parallel)
    per_conn = min(10.0, args.connect_timeout)
    tasks = [
        asyncio.ensure_future(one(args.host, args.port, args.path, sem, per_conn))
        for _ in range(args.conns)
    ]
    done, pending = await asyncio.wait(tasks, timeout=args.connect_timeout)
    for t in pending:
        t.cancel()
    conns = [t.result() for t in done if not t.cancelled() and t.result() is not None]
    print(f"ready {len(conns)}", flush=True)

    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    # A connection the proxy closed while idle has seen EOF (we read each response fully).
    closed = sum(1 for reader, _ in conns if reader.at_eof())
    print(f"held {len(conns) - closed} {closed}", flush=True)
    for _, writer in conns:
        writer.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
