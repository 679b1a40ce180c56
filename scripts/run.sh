#!/usr/bin/env bash
# Runs the daemon on the default config (config/rebased.toml), installing the
# buildah builder first if it is missing. Run as root (buildah with vfs
# storage and chroot isolation, state in /var/lib/rebased).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v buildah >/dev/null; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends buildah
fi

exec cargo run --release --locked -p rebased -- run --config "${1:-config/rebased.toml}"
