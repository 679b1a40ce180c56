#!/usr/bin/env bash
# Runs the benchmark harness (crates/bench) at full size against the real
# docker-registry and the release build of rebased; installs what it needs
# on Debian first. Extra arguments go to rebased-bench, e.g.
#   scripts/bench.sh --quick                 # CI sizes, seconds
#   scripts/bench.sh --only fanin,api        # some scenarios
#   scripts/bench.sh --json bench.json       # every figure as JSON
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pkg in docker-registry buildah skopeo wrk; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --release --locked -p rebased -p rebased-bench
exec target/release/rebased-bench "$@"
