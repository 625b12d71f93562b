#!/usr/bin/env bash
# The benchmarks of docs/BENCHMARKS.md, from a fresh Debian bookworm machine (as root):
#   1. the peers' Debian packages (Chromium, GStreamer webrtcbin + libnice, PyGObject; coturn
#      for the relay scenario)
#   2. the peers' npm packages (playwright-core, node-datachannel; bench/peers/package-lock.json)
#   3. the peers' PyPI packages (aiortc; bench/peers/requirements.txt) in bench/peers/.venv,
#      made from Debian's python3 so that GStreamer's Python bindings import too
#   4. release builds of kvs-webrtc and kvs-bench (and, outside --smoke when the size scenario
#      runs, the size-optimised profile of kvs-webrtc and kvs-signaling-only, if present)
#   5. `kvs-bench run`: every scenario, table on stdout, target/bench/results.{json,md}
#
# Usage: bash scripts/bench.sh            the full run (about 28 minutes on 2 cores, builds included)
#        bash scripts/bench.sh --smoke    the short run CI does (figures printed, not asserted)
#        any other arguments go to `kvs-bench run` (see `kvs-bench run --help`), e.g.
#        --only ttff,memory   --no-peers   --out DIR
# Environment: KVS_TEST_SKIP_APT=1 skips step 1 on machines set up by hand.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PEERS="$ROOT/bench/peers"

APT_PACKAGES=(
  chromium nasm libopus-dev pkg-config clang cmake binutils python3 python3-venv
  python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0
  gir1.2-nice-0.1 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-nice
  coturn
)

export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false

smoke=0
# The size figure needs the release-small builds (slow: LTO, one codegen unit): only made
# outside --smoke when the size scenario runs (no --only, or --only naming it).
wants_size=1
prev=
for arg in "$@"; do
  [[ "$arg" == --smoke ]] && smoke=1
  if [[ "$prev" == --only ]]; then
    [[ ",$arg," == *,size,* ]] || wants_size=0
  elif [[ "$arg" == --only=* ]]; then
    [[ ",${arg#--only=}," == *,size,* ]] || wants_size=0
  fi
  prev="$arg"
done
# Where cargo puts its builds (CARGO_TARGET_DIR, as cargo reads it).
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  else
    sudo -n "$@"
  fi
}

echo "==> peers: Debian packages"
if [[ "${KVS_TEST_SKIP_APT:-}" == 1 ]]; then
  echo "KVS_TEST_SKIP_APT=1: not checking Debian packages"
else
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    as_root apt-get update -q
    as_root apt-get install -y -q "${missing[@]}"
  else
    echo "all present"
  fi
fi

echo "==> peers: npm packages (bench/peers)"
(cd "$PEERS" && npm ci --no-audit --no-fund)

echo "==> peers: PyPI packages (bench/peers/.venv)"
# Debian's interpreter, not one first on PATH: PyGObject (GStreamer's bindings) is Debian's.
if [[ ! -x "$PEERS/.venv/bin/python" ]]; then
  /usr/bin/python3 -m venv --system-site-packages "$PEERS/.venv"
fi
"$PEERS/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$PEERS/requirements.txt"

echo "==> build (release)"
cargo build --release -p kvs-webrtc -p kvs-bench
if ((smoke == 0 && wants_size == 1)); then
  echo "==> build (release-small, for the size figure)"
  cargo build --profile release-small -p kvs-webrtc
  # Split mode's always-on side as its own program, where the tree has it.
  if [[ -f "$ROOT/programs/kvs-signaling-only/Cargo.toml" ]]; then
    cargo build --profile release-small -p kvs-signaling-only
  else
    echo "no kvs-signaling-only package in this tree: its size is not measured"
  fi
fi

echo "==> kvs-bench run $*"
"$TARGET_DIR/release/kvs-bench" run --peers "$PEERS" "$@"
