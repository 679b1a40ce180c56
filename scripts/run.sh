#!/usr/bin/env bash
# Runs the daemon on the default config (config/rebased.toml): the example
# image is built by the native backend into an OCI layout under
# /var/lib/rebased, so no registry and no build engine are needed. Run as
# root (the state directory is /var/lib/rebased). A config with RUN steps
# needs buildah, podman or docker installed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -p rebased -- run --config "${1:-config/rebased.toml}"
