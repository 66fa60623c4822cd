#!/usr/bin/env bash
# Time of one LSE training iteration (source + target forward/backward and the Adam
# step) in lse-train (trainer/examples/bench_train.rs) vs the same step in PyTorch
# eager from .venv (scripts/bench_train.py): same model width, input size, batch and
# thread count. Prints both medians and the ratio (target <= 1.10). Then, when the
# generation benchmarks exist, the scale-invariant example generation timing
# (scripts/bench_generate.py with trainer/examples/bench_generate.rs).
#
#   scripts/bench-train.sh [--width 0.125] [--size 256x128] [--batch 1] [--threads 2]
#                          [--runs 10] [--device cpu|cuda] [--amp off|bf16|fp16]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
WIDTH=0.125 SIZE=256x128 BATCH=1 THREADS=2 RUNS=10 DEVICE=cpu AMP=off
while [ $# -gt 0 ]; do
  case "$1" in
    --width) WIDTH="$2";; --size) SIZE="$2";; --batch) BATCH="$2";;
    --threads) THREADS="$2";; --runs) RUNS="$2";; --device) DEVICE="$2";; --amp) AMP="$2";;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
  shift 2
done
PY="$root/.venv/bin/python"
[ -x "$PY" ] || { echo "error: $PY missing; run scripts/setup.sh" >&2; exit 1; }
common=(--width "$WIDTH" --size "$SIZE" --batch "$BATCH" --threads "$THREADS" --runs "$RUNS" --device "$DEVICE" --amp "$AMP")

# PROFILE=release for a release build (the time is libtorch's either way: the dev
# profile builds dependencies with opt-level 3).
PROFILE="${PROFILE:-dev}"
dir=$([ "$PROFILE" = release ] && echo release || echo debug)
cargo build -q -p lse-trainer --profile "$PROFILE" --example bench_train
exe="$root/target/$dir/examples/bench_train"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
rust_out="$("$exe" "${common[@]}")"
echo "$rust_out" | head -n -1
torch_out="$("$PY" scripts/bench_train.py "${common[@]}")"
echo "$torch_out" | head -n -1
rust_ms="$(echo "$rust_out" | sed -n 's/^RESULT rust_iter_ms=//p')"
torch_ms="$(echo "$torch_out" | sed -n 's/^RESULT torch_iter_ms=//p')"
ratio="$("$PY" -c "print(f'{$rust_ms / $torch_ms:.3f}')")"
echo "training iteration: lse-train ${rust_ms} ms, PyTorch eager ${torch_ms} ms, ratio ${ratio} (target <= 1.10)"
echo "RESULT rust_iter_ms=${rust_ms} torch_iter_ms=${torch_ms} ratio=${ratio}"

if [ -f scripts/bench_generate.py ] && [ -f trainer/examples/bench_generate.rs ]; then
  echo "--- generation of scale-invariant examples ---"
  cargo build -q -p lse-trainer --profile "$PROFILE" --example bench_generate
  "$PY" scripts/bench_generate.py --rust-exe "$root/target/$dir/examples/bench_generate" \
    --threads "$THREADS" || echo "(generation benchmark failed)"
fi
