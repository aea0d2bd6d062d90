#!/usr/bin/env python3
"""A stand-in DNS server and a DNS client for docs/guides/udp.md (Python 3, no packages).

    python3 examples/udp_demo.py serve 5301 192.0.2.1
    python3 examples/udp_demo.py ask 127.0.0.1:5353 www.example.test 4

`serve PORT ADDRESS` answers every A query on 127.0.0.1:PORT (UDP) with ADDRESS, and accepts
TCP connections on the same port, as a DNS server does, for a `type: tcp` health check. It
prints each query it gets. Port 0 picks a free port; the first line says which.

`ask HOST:PORT NAME [COUNT]` sends COUNT A queries for NAME (default 1), each from a new
socket (so each is a new flow for portico), checks that the answer carries the query's
transaction id, and prints the address in it.
"""
import socket
import struct
import sys
import threading


def query(ident, name):
    """A standard query with recursion desired (RFC 1035 section 4.1)."""
    head = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return head + labels + b"\x00" + struct.pack(">HH", 1, 1)


def answer(packet, address):
    """The answer to a query: one A record with `address`, or None for what is not a query."""
    if len(packet) < 12 or packet[2] & 0x80:
        return None, None
    at, labels = 12, []
    while at < len(packet) and packet[at]:
        length = packet[at]
        labels.append(packet[at + 1:at + 1 + length].decode(errors="replace"))
        at += 1 + length
    question = packet[12:at + 5]
    head = packet[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    record = struct.pack(">HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    return head + question + record, ".".join(labels)


def bind_pair(port):
    """A UDP socket and a TCP one on the same port; with port 0, a port free for both."""
    for _ in range(50 if port == 0 else 1):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            # The kernel's free UDP port is taken for TCP: try another one.
            udp.close()
            tcp.close()
            continue
        return udp, tcp
    raise SystemExit(f"no port free for both UDP and TCP (asked for {port})")


def serve(port, address):
    udp, tcp = bind_pair(port)
    port = udp.getsockname()[1]
    tcp.listen(16)

    def accept():
        while True:
            conn, _ = tcp.accept()
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    print(f"dns {address} listening on 127.0.0.1:{port} (udp; tcp for health checks)", flush=True)
    while True:
        packet, client = udp.recvfrom(65535)
        reply, name = answer(packet, address)
        if reply is None:
            continue
        ident = struct.unpack(">H", packet[:2])[0]
        print(f"{address} got A {name} id {ident} from {client[0]}:{client[1]}", flush=True)
        udp.sendto(reply, client)


def ask(target, name, count):
    host, port = target.rsplit(":", 1)
    for ident in range(1, count + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(query(ident, name), (host, int(port)))
            try:
                reply = s.recv(65535)
            except socket.timeout:
                print(f"query {ident}: no answer")
                continue
        got = struct.unpack(">H", reply[:2])[0]
        if got != ident:
            print(f"query {ident}: answer for id {got}")
        elif reply[7] == 1:
            print(f"query {ident}: {name} A {socket.inet_ntoa(reply[-4:])}")
        else:
            print(f"query {ident}: no address (rcode {reply[3] & 15})")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "ask":
        ask(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    else:
        sys.exit(__doc__)
