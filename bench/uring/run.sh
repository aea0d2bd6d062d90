#!/usr/bin/env bash
# The io_uring experiment (issue "performance and hardening", part 5): one minimal HTTP/1.1
# proxy loop (src/bin/*.rs: read a whole request, write it to a kept upstream connection, read
# the whole answer, write it back, byte for byte) on two I/O engines — tokio's epoll and
# tokio-uring's io_uring — and, for scale, portico itself, under the same load as
# bench/compare.sh's `root` test: wrk -t1 -c50 GET / (13 bytes), proxy pinned to CPU 0, the
# upstream and wrk on CPU 1.
#
#   UPSTREAM_BIN=target/release/examples/bench_upstream [PORTICO_BIN=target/release/portico] \
#     ROUNDS=3 SECONDS_EACH=8 bash bench/uring/run.sh
#
# Prints, per engine and round: requests/s, requests per proxy CPU-second, and user and
# kernel CPU microseconds per request (from /proc/PID/stat of the proxy).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${UPSTREAM_BIN:?set UPSTREAM_BIN to a built examples/bench_upstream}"
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-8}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
(cd "$here" && cargo build --release --quiet)
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

taskset -c "$LOAD_CPU" "$UPSTREAM_BIN" --listen 127.0.0.1:0 >"$tmp/up.out" &
pids+=($!)
for _ in $(seq 200); do grep -q listening "$tmp/up.out" && break; sleep 0.05; done
upstream=$(awk '/listening/ {print $2}' "$tmp/up.out")

start_proxy() { # ENGINE PORT → the proxy's pid on stdout
    local engine=$1 port=$2
    case $engine in
        epoll | uring)
            taskset -c "$PROXY_CPU" "$here/target/release/${engine}_proxy" \
                --listen "127.0.0.1:$port" --upstream "$upstream" >/dev/null 2>&1 &
            ;;
        portico)
            cat >"$tmp/portico.yaml" <<YAML
workers: 1
access_log: { enabled: false }
listeners: [ { name: web, bind: "127.0.0.1:$port" } ]
routes: [ { name: all, upstream: up } ]
upstreams: { up: { targets: [ { address: "$upstream" } ] } }
YAML
            taskset -c "$PROXY_CPU" "$PORTICO_BIN" run --config "$tmp/portico.yaml" >/dev/null 2>&1 &
            ;;
    esac
    echo $!
}

ticks=$(getconf CLK_TCK)
engines=(epoll uring)
[ -n "${PORTICO_BIN:-}" ] && engines+=(portico)
printf '%-8s %5s %10s %12s %10s %10s\n' engine round req/s req/CPU-s user_us kernel_us
for round in $(seq "$ROUNDS"); do
    for engine in "${engines[@]}"; do
        port=$(free_port)
        pid=$(start_proxy "$engine" "$port")
        pids+=("$pid")
        wait_port "$port"
        # Warm up, then measure the proxy's CPU over the timed run.
        taskset -c "$LOAD_CPU" wrk -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null
        read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
        out=$(taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${SECONDS_EACH}s" "http://127.0.0.1:$port/")
        read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
        kill "$pid"; wait "$pid" 2>/dev/null || true
        requests=$(echo "$out" | awk '/requests in/ {print $1}')
        errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
        [ -n "$errors" ] && echo "$engine round $round: $errors" >&2
        python3 - "$engine" "$round" "$requests" "$SECONDS_EACH" "$u0" "$s0" "$u1" "$s1" "$ticks" <<'PY'
import sys
engine, rnd, n, secs, u0, s0, u1, s1, hz = sys.argv[1:]
n, secs, hz = int(n), float(secs), float(hz)
user = (int(u1) - int(u0)) / hz
kern = (int(s1) - int(s0)) / hz
cpu = user + kern
print(f"{engine:<8} {rnd:>5} {n / secs:>10,.0f} {n / cpu if cpu else 0:>12,.0f} "
      f"{user / n * 1e6:>10.2f} {kern / n * 1e6:>10.2f}")
PY
    done
done
