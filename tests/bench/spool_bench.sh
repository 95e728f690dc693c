#!/usr/bin/env bash
# tests/bench/spool_bench.sh: builds and runs the spool benchmark (library and dynmx-enqueue against
# a plain write+fsync baseline, 4 KB and 1 MB messages). Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build spool_bench dynmx-enqueue >/dev/null
exec build/bin/spool_bench "$PWD/build/bin/dynmx-enqueue" "${1:-/var/tmp/dynmx-spool-bench}"
