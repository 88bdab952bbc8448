#!/usr/bin/env bash
# The full test command: Rust and Python tests plus every linter the project uses.
# Usage: bash scripts/test.sh          (README, CI: .ci/run calls exactly this)
# Environment:
#   LORA_RANK_VENV  virtualenv to (re)use; default ~/.cache/lora-rank/venv. It holds exactly the
#                   versions in requirements/test.txt (scripts/lock.sh makes that file) and is
#                   re-created when that file changes; torch from PyPI is a large CUDA build, so
#                   a venv is kept between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${LORA_RANK_VENV:-$HOME/.cache/lora-rank/venv}
lock=requirements/test.txt
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

step() { printf '\n=== %s\n' "$*"; }

step "python environment ($venv, exact versions from $lock)"
# The venv is ours when this script made it (marker file, or the stamp of an older version of
# this script); only then is it re-created when the lock file changes.
stamp="$venv/.lora-rank-lock-$(sha256sum "$lock" | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ ! -f "$stamp" ]; then
  if compgen -G "$venv/.lora-rank-*" >/dev/null; then
    echo "$lock changed since this venv was made: re-creating it"
    rm -rf "$venv"
  else
    echo "$venv was not made by this script: installing $lock into it"
  fi
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  touch "$venv/.lora-rank-venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
if [ ! -f "$stamp" ]; then
  python -m pip install -q "$(grep -E '^pip==' "$lock")"
  python -m pip install -q --no-deps -r "$lock"
  python -m pip check
  touch "$stamp"
fi

step "build the extension (maturin develop --release)"
maturin develop --release -q 2>&1 | grep -v "^📦\|^🔗\|^🐍\|^⚠️  Warning: CPython" || true
python -c "import lora_rank, sys; print('lora_rank', lora_rank.__version__, 'from', lora_rank.__file__)"

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -- -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings
step "cargo test"
cargo test --workspace -q 2>&1 | tail -n 25

step "fuzz the header/index parsers for 60 s (fuzz/run.sh; proptest if cargo-fuzz is unusable)"
fuzz_rc=0
if command -v cargo-fuzz >/dev/null || cargo install -q --locked cargo-fuzz; then
  bash fuzz/run.sh "${LORA_RANK_FUZZ_SECONDS:-20}" || fuzz_rc=$?
else
  fuzz_rc=3
fi
if [ "$fuzz_rc" = 3 ]; then
  echo "cargo-fuzz cannot be installed or built here: 300k proptest cases per property instead"
  PROPTEST_CASES=300000 cargo test -p lora_rank_core -q --test header_props 2>&1 | tail -n 3
elif [ "$fuzz_rc" != 0 ]; then
  exit "$fuzz_rc"
fi

step "ruff check / ruff format --check"
ruff check python tests benches scripts
ruff format --check python tests benches scripts
step "mypy + stubtest"
mypy
python -m mypy.stubtest lora_rank._core --mypy-config-file pyproject.toml

step "benchmark smoke run (benches/run.py --quick: < 1 min, temporary files only)"
python benches/run.py --quick

step "Ray executor tests (tests/test_ray.py: a two-node Ray cluster, in a loopback-only network namespace)"
# Ray binds the machine's outward address even for a local cluster, and these machines allow
# loopback traffic only: the cluster tests run inside `unshare -n` (root, or unprivileged user
# namespaces), where 127.0.0.1 is the only address; outside it they skip.
unshare -n bash -c 'ip link set lo up && LORA_RANK_RAY_TESTS=1 exec python -m pytest -q -p no:cacheprovider tests/test_ray.py'

# pytest last: its summary line closes the run.
step "pytest"
python -m pytest -q -p no:cacheprovider "$@"
