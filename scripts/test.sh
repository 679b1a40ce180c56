#!/usr/bin/env bash
# Runs the whole test suite, installing first, on Debian, every program the
# tests start (tests/tests/tidy.rs fails when a test starts a program this
# list does not cover), then schemathesis from PyPI. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# One Debian package a line; the tidy test reads this list.
packages=(
  docker-registry      # docker-registry: the real registry
  buildah              # buildah: test base images, the buildah backend
  podman               # podman: the podman backend, and the docker backend's command lines
  skopeo               # skopeo: checks what was pushed
  busybox-static       # busybox: the test base images' only program
  apache2-utils        # htpasswd: the registry's credentials
  openssl              # openssl: the registry's TLS certificate and CA
  curl                 # curl: the CLI test's unix-socket request
  git                  # git: the source crate's tests (file://, git daemon), the git it drives
  openssh-server       # /usr/sbin/sshd: ssh:// sources with a deploy key and known_hosts
  openssh-client       # ssh-keygen: the test keys; ssh: what git runs for ssh:// sources
  procps               # kill: SIGTERM to the daemon, the engine's process group
  systemd              # systemd-analyze: checks the unit
  wrk                  # wrk: the benchmark harness's quick run loads the API
  python3              # python3: schemathesis, the token issuer
  python3-pip          # pip: installs schemathesis below
  python3-cryptography # the token issuer signs its JWTs with it; tests/cosign.py verifies signatures
  python3-nacl         # tests/cosign.py writes cosign's encrypted key (nacl/secretbox)
  python3-aiosmtpd     # the SMTP server of the email notifier's test (tests/smtp/server.py)
  qemu-user-static     # the qemu-aarch64 handler the kernel runs arm64 RUN steps with
  binfmt-support       # update-binfmts: registers and enables that handler
  iproute2             # ip: the remote engines' network namespaces, veth pairs and bridge
  util-linux           # nsenter: starts each remote engine's service inside its namespace
  runc                 # the runtime the remote engines' podman services run RUN steps with
  nodejs               # node: runs the browser tests (tests/browser); a nodesource nodejs counts
  chromium             # the headless browser the browser tests drive (Playwright)
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# The arm64 busybox base of tests/tests/platforms.rs comes from Debian's
# busybox-static:arm64 (apt-get download, unpacked with dpkg-deb, which
# Debian's essential dpkg package provides): the arm64 package lists.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "adding the arm64 architecture (apt-get download busybox-static:arm64)"
  $sudo dpkg --add-architecture arm64
  $sudo apt-get update -qq
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Emulated builds (linux/arm64 RUN steps): binfmt_misc mounted and the
# qemu-aarch64 handler enabled (binfmt-support's postinst may not run it in
# a container).
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  $sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! head -n1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null | grep -qx enabled; then
  $sudo update-binfmts --enable qemu-aarch64
fi

# npm: a nodesource nodejs brings its own; Debian's nodejs needs Debian's npm
# (installed only then: the two packages' npm would conflict).
if ! command -v npm >/dev/null 2>&1; then
  echo "installing: npm"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm
fi
# The browser tests' packages (playwright-core, axe-core) from the npm
# registry, as package-lock.json pins them (again only when the lock changed).
if [ ! -d tests/browser/node_modules ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
  echo "installing: playwright-core, axe-core (npm ci in tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# schemathesis (PyPI) fuzzes the live API against its OpenAPI document.
# Debian's python3 is externally managed (PEP 668): the first variable lets pip
# install into it, the other keeps it quiet as root (older pips ignore both).
if ! python3 -m schemathesis.cli --version >/dev/null 2>&1; then
  echo "installing: schemathesis (pip)"
  PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check schemathesis
fi

# --no-fail-fast: a failing test binary does not hide the ones after it.
exec cargo test --workspace --locked --no-fail-fast "$@"
