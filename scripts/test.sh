#!/usr/bin/env bash
# The whole test suite, from a fresh Debian bookworm machine (as root) to a verdict:
#   1. system packages the build and the browser tests need (installed only if missing)
#   2. the browser tests' npm packages (`npm ci`, pinned by tests/browser/package-lock.json)
#   3. the release build of the program the browser tests run
#   4. every Rust test in the workspace
#   5. the browser tests: real headless Chromium viewing the real program
#   6. conformance: the official AWS clients (JS SDK v3, the KVS WebRTC JS SDK, boto3) against
#      the local signaling service
#   7. RainMaker remote control: the node (kvs-app's `rainmaker_node` example) against Debian's
#      mosquitto with mutual TLS and per-node ACLs, driven by paho-mqtt as the cloud
#   8. the fuzz targets still build
#   9. lint: rustfmt and clippy with warnings as errors
#  10. the benchmarks' smoke run (scripts/bench.sh --smoke: every scenario, peers included,
#      figures printed and not asserted — so the benchmark cannot rot)
# Stops at the first failure and says which step failed; prints a summary either way.
#
# Usage: bash scripts/test.sh          (what .ci/run and the README call)
# Environment: KVS_TEST_SKIP_APT=1 skips step 1 on machines set up by hand.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Debian packages: the browser, what the H.264 (nasm), Opus (libopus-dev, pkg-config) and
# crypto (clang, cmake) crates need to build, coturn (the TURN server the relay test uses), and
# iproute2 + python3 for the fault tests between network namespaces (tests/faults), iptables +
# conntrack + openssl for the NAT tests (tests/nat: NAT routers, a TLS certificate for coturn), mosquitto
# (the MQTT broker the RainMaker tests start, tests/rainmaker), ffmpeg (test sources: VP8/H.265/raw
# frames, and ffprobe to open recordings), libasound2-dev (the `sound-card` feature's ALSA, built by
# its test and by clippy --all-features).
APT_PACKAGES=(chromium ffmpeg libasound2-dev nasm libopus-dev pkg-config clang cmake ca-certificates coturn iproute2 iptables conntrack openssl procps python3 socat mosquitto)
NODE_MIN_MAJOR=20 # playwright-core's minimum

export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false

SUITE_START=$(date +%s)
STEP_NAMES=()
STEP_TIMES=()
CURRENT_STEP=""
STEP_START=0

summary() {
  local status=$1
  echo
  echo "================ test suite summary ================"
  local i
  for i in "${!STEP_NAMES[@]}"; do
    printf '  ok    %-48s %5ss\n' "${STEP_NAMES[$i]}" "${STEP_TIMES[$i]}"
  done
  if [[ -n "$CURRENT_STEP" ]]; then
    printf '  FAIL  %-48s %5ss\n' "$CURRENT_STEP" "$(($(date +%s) - STEP_START))"
  fi
  echo "  total time: $(($(date +%s) - SUITE_START))s"
  echo "  result: $status"
  echo "===================================================="
}

on_error() {
  local rc=$1 line=$2
  trap - ERR
  echo >&2
  echo "ERROR: step \"${CURRENT_STEP:-setup}\" failed (exit status $rc, scripts/test.sh line $line); stopping." >&2
  summary "FAILED at: ${CURRENT_STEP:-setup}"
  exit "$rc"
}
trap 'on_error $? $LINENO' ERR

step() {
  CURRENT_STEP=$1
  shift
  STEP_START=$(date +%s)
  echo
  echo "==> ${CURRENT_STEP}"
  "$@"
  STEP_NAMES+=("$CURRENT_STEP")
  STEP_TIMES+=("$(($(date +%s) - STEP_START))")
  CURRENT_STEP=""
}

die() {
  echo "ERROR: $*" >&2
  return 1
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

install_system_packages() {
  if [[ "${KVS_TEST_SKIP_APT:-}" == 1 ]]; then
    echo "KVS_TEST_SKIP_APT=1: not checking Debian packages"
  else
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
      if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
      fi
    done
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
      missing+=(nodejs npm)
    fi
    if ((${#missing[@]})); then
      echo "installing missing Debian packages: ${missing[*]}"
      as_root apt-get update -q
      as_root apt-get install -y -q "${missing[@]}"
    else
      echo "all present: ${APT_PACKAGES[*]}"
    fi
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
  [[ -x /usr/bin/chromium ]] || die "/usr/bin/chromium missing after installing the chromium package"
  local node_major
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  ((node_major >= NODE_MIN_MAJOR)) || die "Node.js $(node --version) is too old: the browser tests need Node >= ${NODE_MIN_MAJOR}"
  echo "cargo: $(cargo --version)"
  echo "node: $(node --version), npm: $(npm --version)"
  echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
}

npm_install() {
  (cd tests/browser && npm ci --no-audit --no-fund)
}

build_release() {
  cargo build --release -p kvs-webrtc
  [[ -x target/release/kvs-webrtc || -n "${CARGO_TARGET_DIR:-}" ]] || die "the build produced no target/release/kvs-webrtc"
}

rust_tests() {
  cargo test --workspace
  # The sound-card speaker is behind a feature (no sound device here: its test checks that a
  # device that cannot be opened is a clear error).
  cargo test -p kvs-platform --features sound-card --lib sound_card
}

browser_tests() {
  # One test file at a time: each starts the program and Chromium, and the machine has 2 cores.
  node --test --test-concurrency=1 tests/browser/
  # Faults while a viewer watches: the service killed and restarted, GO_AWAY, a vanished viewer,
  # a lossy network between namespaces (docs/TESTING.md).
  # Bounded as a whole, so a hung cleanup can never eat CI's budget (a run takes ~2.5 min).
  timeout 900 node --test --test-concurrency=1 tests/faults/
  # NAT traversal between real NATs in network namespaces (iptables MASQUERADE, coturn, the
  # local service in a "public" namespace, Chromium behind its own NAT; docs/TESTING.md).
  timeout 900 node --test --test-concurrency=1 tests/nat/
}

conformance_tests() {
  # Pinned by tests/conformance/package-lock.json and requirements.txt.
  (cd tests/conformance && npm ci --no-audit --no-fund)
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/conformance/requirements.txt
  node --test --test-concurrency=1 tests/conformance/
  .venv/bin/python -m unittest discover -s tests/conformance -p 'test_*.py' -v
}

rainmaker_tests() {
  # mosquitto and the node are started by the test and removed afterwards (~20 s).
  if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
  fi
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/rainmaker/requirements.txt
  # The node's core and config run in `cargo test --workspace` (the device program turns the
  # `rainmaker` feature on), which also built the example node these tests drive.
  cargo build --workspace --examples
  RAINMAKER_NODE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/rainmaker_node" \
    .venv/bin/python -m unittest discover -s tests/rainmaker -p 'test_*.py' -v
}

fuzz_build() {
  # The fuzz crate is its own workspace (libFuzzer instrumentation); checking it keeps every
  # target compiling. Running them is described in docs/TESTING.md.
  (cd fuzz && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz" cargo check --bins)
}

lint() {
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets -- -D warnings
  # Features no workspace member turns on (RainMaker remote control).
  cargo clippy -p kvs-app --all-targets --all-features -- -D warnings
}

bench_smoke() {
  bash scripts/bench.sh --smoke
}

step "1/10 system packages" install_system_packages
step "2/10 npm ci (tests/browser)" npm_install
step "3/10 cargo build --release -p kvs-webrtc" build_release
step "4/10 cargo test --workspace" rust_tests
step "5/10 browser tests (node --test tests/browser/ tests/faults/ tests/nat/)" browser_tests
step "6/10 conformance (official AWS clients vs the local service)" conformance_tests
step "7/10 RainMaker node (mosquitto, paho-mqtt)" rainmaker_tests
step "8/10 fuzz targets build (cargo check in fuzz/)" fuzz_build
step "9/10 lint (cargo fmt --check, clippy -D warnings)" lint
step "10/10 benchmark smoke run (scripts/bench.sh --smoke)" bench_smoke

trap - ERR
summary "all steps succeeded"
