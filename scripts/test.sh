#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the test peers the suite starts
# (curl, openssl, pebble, h2load, redis-server, etcd, haproxy; grpcio and websockets for the gRPC
# and WebSocket tests; opentelemetry-proto for the tracing tests; node, Chromium and the OpenID Provider's npm packages for the OIDC tests)
# when they are missing, then `cargo test`.
# Extra arguments go to `cargo test` (for example a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# The ACME tests run against Debian's pebble (a test CA).
command -v pebble >/dev/null || need+=(pebble)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v python3 >/dev/null || need+=(python3 python3-pip)
# The layer-4 tests proxy a real Redis; HAProxy sends them the PROXY protocol.
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v haproxy >/dev/null || need+=(haproxy)
# The cluster tests run portico nodes on a real etcd.
command -v etcd >/dev/null || need+=(etcd-server)
# The static-file tests make precompressed siblings with gzip and zstd.
command -v zstd >/dev/null || need+=(zstd)
# The OIDC tests run a real OpenID Provider (oidc-provider) under node, and log in through it
# with headless Chromium driven by playwright-core.
command -v node >/dev/null || need+=(nodejs npm)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "missing test peers (${need[*]}): install them as root, or install sudo" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  echo "installing test peers: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi

# The gRPC tests run a real gRPC server and client: grpcio, with grpcio-tools for protoc.
# The WebSocket tests use the `websockets` package as a real client and server.
# The tracing tests decode OTLP exports with opentelemetry-proto's messages.
if ! python3 -c "import grpc, grpc_tools, websockets, opentelemetry.proto" 2>/dev/null; then
  echo "installing test peers: grpcio grpcio-tools websockets opentelemetry-proto (pip)" >&2
  python3 -m pip install --quiet grpcio grpcio-tools websockets opentelemetry-proto ||
    python3 -m pip install --quiet --break-system-packages grpcio grpcio-tools websockets \
      opentelemetry-proto
fi

# The OpenID Provider and its clients (tests/e2e/oidc): the npm packages pinned by its lockfile.
# playwright-core drives Debian's Chromium and must never download a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
oidc=tests/e2e/oidc
if [ ! -d "$oidc/node_modules" ] || [ "$oidc/package-lock.json" -nt "$oidc/node_modules" ]; then
  echo "installing test peers: oidc-provider playwright-core (npm ci in $oidc)" >&2
  (cd "$oidc" && npm ci --no-audit --no-fund)
  touch "$oidc/node_modules"
fi

cargo test --locked "$@"
