#!/usr/bin/env bash
# Runs every fuzz target in fuzz/Cargo.toml for a set time each and prints, per target, the
# executions, the coverage libFuzzer reached and whether it crashed.
#
# Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#        bash scripts/fuzz.sh 600            every target, 10 minutes each
#        bash scripts/fuzz.sh 60 ice_candidate signaling_codec
# Needs cargo-fuzz (`cargo install cargo-fuzz`; installed here if missing). The one stable
# toolchain accepts libFuzzer's sanitizer flags with RUSTC_BOOTSTRAP=1.
# Corpora grow in fuzz/corpus/<target> (ignored by git); crashes land in fuzz/artifacts/<target>.
# Exit status: 1 if any target crashed.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
SECONDS_EACH="${1:-60}"
shift || true

command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1

if (($#)); then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^kvs-webrtc-fuzz$')
fi

cargo fuzz build --release

LOGS="$ROOT/target/fuzz-logs"
mkdir -p "$LOGS"
printf '%-18s %14s %8s %8s  %s\n' target executions cov features result
failed=0
for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target"
  log="$LOGS/$target.log"
  if cargo fuzz run --release "$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see $log and fuzz/artifacts/$target)"
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  # The last status line carries the coverage reached: "#N ... cov: C ft: F ...".
  cov=$(grep -ao 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  ft=$(grep -ao 'ft: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  printf '%-18s %14s %8s %8s  %s\n' "$target" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
exit "$failed"
