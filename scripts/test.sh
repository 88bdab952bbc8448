#!/usr/bin/env bash
# The full test command: Rust and Python tests plus every linter the project uses.
# Usage: bash scripts/test.sh          (README, CI: .ci/run calls exactly this)
# Environment:
#   LORA_RANK_VENV  virtualenv to (re)use; default ~/.cache/lora-rank/venv. torch from PyPI is a
#                   large CUDA build: it is installed once per venv and kept.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${LORA_RANK_VENV:-$HOME/.cache/lora-rank/venv}
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

step() { printf '\n=== %s\n' "$*"; }

step "python environment ($venv)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
# Reinstall dependencies only when pyproject.toml changes.
stamp="$venv/.lora-rank-deps-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python - <<'PY' > "$venv/.lora-rank-requirements.txt"
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = p["optional-dependencies"]
seen, todo, reqs = set(), ["test"], list(p["dependencies"])
while todo:
    e = todo.pop()
    if e in seen:
        continue
    seen.add(e)
    for r in extras[e]:
        if r.startswith("lora-rank["):
            todo.extend(r[len("lora-rank["):-1].split(","))
        else:
            reqs.append(r)
print("\n".join(sorted(set(reqs))))
PY
  python -m pip install -q maturin -r "$venv/.lora-rank-requirements.txt"
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

# pytest last: its summary line closes the run.
step "pytest"
python -m pytest -q -p no:cacheprovider "$@"
