#!/usr/bin/env bash
# Runs the whole test suite, installing what the tests need on Debian first:
# docker-registry (the real registry), buildah and podman (the real
# builders; podman also stands in for the docker CLI), skopeo (to check what
# was pushed), busybox-static (the test base images),
# systemd (systemd-analyze checks the unit), wrk (the benchmark harness's
# quick run loads the API), and schemathesis from PyPI
# (API fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pkg in docker-registry buildah podman skopeo busybox-static systemd wrk; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# schemathesis (PyPI) fuzzes the live API against its OpenAPI document.
if ! python3 -m schemathesis.cli --version >/dev/null 2>&1; then
  echo "installing: schemathesis (pip)"
  python3 -m pip install --quiet --disable-pip-version-check schemathesis
fi

exec cargo test --workspace --locked "$@"
