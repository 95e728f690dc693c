#!/usr/bin/env bash
# tests/deps.sh: installs, with apt-get, the Debian 12 packages dynmx needs to build, test and run
# its demo — only those missing, so that a second run takes a moment. Needs root.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config
  libmilter-dev libssh2-1-dev libssl-dev libboost-dev libtomlplusplus-dev
  googletest libgtest-dev libgmock-dev
  # fuzzing and sanitizers
  clang libclang-rt-14-dev
  # tests/tools/long_functions
  clang-tidy python3
  # the metrics tests read the output with its parsers
  python3-prometheus-client
  # the Debian package (tests/package)
  debhelper lintian
  # real parts for the tests and the demo
  openssh-server openssh-client sendmail-bin sendmail-cf m4 miltertest swaks
  procps iproute2 ca-certificates
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/deps.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  echo "tests/deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Installing sendmail must not start a daemon on port 25 of this machine.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# sshd wants its privilege-separation directory; sendmail warns without host_status.
mkdir -p /run/sshd /var/lib/sendmail/host_status 2>/dev/null || true
# The Postfix tests run Debian's postfix package unpacked (it conflicts with sendmail-bin, so it
# is never installed): they download it with `apt-get download postfix` into
# /var/cache/dynmx-tests/postfix on first use. Make sure apt knows where to find it.
if [ "$(id -u)" -eq 0 ] && ! apt-cache show postfix >/dev/null 2>&1; then
  apt-get update -q
fi
