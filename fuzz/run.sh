#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 20) and print one summary line per target:
#   bash fuzz/run.sh 20            (CI: bounded; see scripts/test.sh)
#   bash fuzz/run.sh 3600 header   (by hand: one target for an hour)
# Needs cargo-fuzz; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks the sanitizer flags.
# Builds are release with debug assertions (integer overflow panics) and AddressSanitizer.
# Seeds come from make_corpus.py when the Python environment can build them. Exit status:
# 0 no crash; 1 a crash (its input is saved in fuzz/artifacts/<target>/); 3 the build failed.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
if [ $# -gt 0 ]; then targets=("$@"); else targets=(header index checkpoint); fi
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
if [ ! -d corpus/header ]; then
  python make_corpus.py >/dev/null 2>&1 || echo "fuzz: no seed corpus (make_corpus.py failed); starting from scratch"
fi
if ! build_log=$(cargo fuzz build -O -a 2>&1); then
  echo "$build_log" | tail -n 30
  echo "fuzz: cargo fuzz build failed"
  exit 3
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t.log"
  if ! cargo fuzz run -O -a "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=32768 \
      -dict=safetensors.dict -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz $t: CRASH (input saved in fuzz/artifacts/$t/)"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz $t: ${seconds}s, $runs executions, 0 crashes"
done
