#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the test peers the suite starts
# (curl, openssl, pebble, h2load) when they are missing, then `cargo test`.
# Extra arguments go to `cargo test` (for example a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
# The ACME tests run against Debian's pebble (a test CA).
command -v pebble >/dev/null || need+=(pebble)
command -v h2load >/dev/null || need+=(nghttp2-client)
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

cargo test --locked "$@"
