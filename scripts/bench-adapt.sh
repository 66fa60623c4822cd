#!/usr/bin/env bash
# The paper's comparison on the built-in synthetic domains, from one committed
# source-only model (scripts/train-source.sh), and docs/results.md from it.
#
#   scripts/bench-adapt.sh              # tune (if not done), then every arm x seed, then the table
#   scripts/bench-adapt.sh tune         # only the learning-rate choice on the tuning split
#   scripts/bench-adapt.sh report       # only rewrite docs/results.md from finished arms
#   LSE_BENCH_REGIME=source-camera scripts/bench-adapt.sh
#                                       # the same with the target domain of
#                                       # scripts/regimes/NAME.json (lse synth --domains),
#                                       # into docs/results-NAME.md
#
# Arms, each seed from the same source model and data:
#   source-only    the source model itself
#   control        source-only training continued for as many iterations as LSE ran
#                  (same lr, batch and source batches)
#   self-training  the LSE round with window scale 1.0 (no zoom), same selection/thresholds
#   lse-nofocal    LSE without the focal term
#   lse            LSE with the focal term (the paper's method)
#   oracle         the source model fine-tuned on the target-train labels (seed 0 only)
# The adaptation learning rate is chosen on a separate labelled tuning split of the
# target (its own seed; never val), by LSE's mIoU after the last round, from
# LSE_BENCH_LRS. The choice is written to OUT/tuning.json and used by every arm.
#
# It resumes: a finished arm is skipped, an interrupted one continues (--resume).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

MODE="${1:-all}"
SIZE="${LSE_BENCH_SIZE:-256x128}"
SEEDS="${LSE_BENCH_SEEDS:-0 1 2}"
PSCHED="${LSE_BENCH_P:-0.1,0.15,0.2}"
BATCH="${LSE_BENCH_BATCH:-4}"
LRS="${LSE_BENCH_LRS:-1e-5 1e-4}"           # candidates, chosen on the tuning split
ORACLE_ITERS="${LSE_BENCH_ORACLE_ITERS:-1500}"
ORACLE_LR="${LSE_BENCH_ORACLE_LR:-1e-4}"
THREADS="${LSE_BENCH_THREADS:-$(nproc)}"
NTRAIN="${LSE_BENCH_TRAIN:-400}"            # source images and target-train images adapted on
NVAL="${LSE_BENCH_VAL:-100}"                # target-val images (reported)
REGIME="${LSE_BENCH_REGIME:-default}"      # default: lse synth's built-in domains
source "$root/scripts/lib/regime.sh"
regime_domains "$REGIME" LSE_BENCH_REGIME
if [ "$REGIME" = default ]; then
  sfx=""; regen="scripts/bench-adapt.sh"
else
  sfx="-$REGIME"; regen="LSE_BENCH_REGIME=$REGIME scripts/bench-adapt.sh"
fi
SRC_DATA="${LSE_BENCH_SOURCE_DATA:-$root/out/bench/data-$SIZE}"   # the source model's data
DATA="${LSE_BENCH_DATA:-$root/out/bench/data-$SIZE-n$NTRAIN$sfx}"
TUNE_DATA="$SRC_DATA-tune$sfx"
SRC="${LSE_BENCH_SOURCE:-$root/models/source-synth/checkpoint.safetensors}"
OUT="${LSE_BENCH_OUT:-$root/out/bench/adapt-$SIZE-n$NTRAIN$sfx}"
RESULTS="${LSE_BENCH_RESULTS:-$root/docs/results$sfx.md}"
BIN="${LSE_BENCH_BIN:-$root/target/release}"   # a copy keeps a long run on one build
PY="$root/.venv/bin/python"

source "$root/scripts/lib/build.sh"
release_build
if [ ! -f "$SRC" ]; then
  echo "[bench] no source model at $SRC: running scripts/train-source.sh" >&2
  LSE_SKIP_BUILD=1 LSE_SRC_SIZE="$SIZE" LSE_BENCH_DATA="$SRC_DATA" bash scripts/train-source.sh
fi
# The benchmark's pair: the first NTRAIN source and target-train images and the val
# split of the source model's seed (every synthetic image depends only on the seed,
# the split and its index, so these are the same images the source model's data has).
if [ ! -f "$DATA/synth.json" ]; then
  rm -rf "$DATA"
  "$BIN/lse" synth --out "$DATA" --train "$NTRAIN" --val "$NVAL" --size "$SIZE" --seed 0 \
    "${domains[@]}"
fi
# The tuning split (its own seed, labelled, never reported) joins the target as split
# `tune` (links, no copies).
if [ ! -f "$TUNE_DATA/synth.json" ]; then
  "$BIN/lse" synth --out "$TUNE_DATA" --train 0 --val 60 --size "$SIZE" --seed 1000 \
    "${domains[@]}"
fi
for sub in leftImg8bit gtFine; do
  if [ ! -e "$DATA/target/$sub/tune" ]; then
    ln -s "$TUNE_DATA/target/$sub/val" "$DATA/target/$sub/tune"
  fi
done
mkdir -p "$OUT"

common=(--source "gta5:$DATA/source" --target "cityscapes:$DATA/target"
        --source-size "$SIZE" --target-size "$SIZE" --batch-size "$BATCH"
        --device cpu --threads "$THREADS" --quiet)

# run_arm NAME SEED CMD ARGS...: runs `lse-train CMD` into OUT/NAME-sSEED unless finished.
run_arm() {
  local name="$1" seed="$2" cmd="$3"; shift 3
  local dir="$OUT/$name-s$seed"
  if [ -f "$dir/model.safetensors" ]; then return 0; fi
  local t0; t0=$(date +%s)
  if [ -f "$dir/run.json" ]; then
    echo "[bench] resuming $name (seed $seed)" >&2
    "$BIN/lse-train" "$cmd" --resume "$dir" --device cpu --threads "$THREADS" --quiet
  else
    echo "[bench] $name (seed $seed)" >&2
    "$BIN/lse-train" "$cmd" --init "$SRC" --out "$dir" --seed "$seed" "$@"
  fi
  echo "[bench] $name (seed $seed) done in $(( $(date +%s) - t0 )) s" >&2
}

adapt_iterations() { # total training iterations of a finished adaptation run
  "$PY" -c 'import json,sys; print(sum(r["iterations_done"] for r in json.load(open(sys.argv[1]))["rounds"]))' "$1/run.json"
}

tune() {
  if [ -f "$OUT/tuning.json" ]; then return 0; fi
  for lr in $LRS; do
    run_arm "tune-lse-lr$lr" 0 adapt "${common[@]}" --p-schedule "$PSCHED" --lr "$lr" \
      --focal true --set val_split=tune
  done
  "$PY" scripts/bench_adapt.py choose "$OUT" "$LRS" > "$OUT/tuning.json.tmp"
  mv "$OUT/tuning.json.tmp" "$OUT/tuning.json"
  echo "[bench] chosen on the tuning split: $(cat "$OUT/tuning.json")" >&2
}

arms() {
  local lr
  lr=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["lr"])' "$OUT/tuning.json")
  echo "[bench] adaptation lr $lr (chosen on the tuning split)" >&2
  if [ ! -f "$OUT/source-only/eval.json" ]; then
    mkdir -p "$OUT/source-only"
    "$BIN/lse-train" eval "$SRC" --target "cityscapes:$DATA/target" --split val --json \
      --device cpu --threads "$THREADS" > "$OUT/source-only/eval.json.tmp"
    mv "$OUT/source-only/eval.json.tmp" "$OUT/source-only/eval.json"
  fi
  local first=1
  for seed in $SEEDS; do
    run_arm lse "$seed" adapt "${common[@]}" --p-schedule "$PSCHED" --lr "$lr" --focal true
    run_arm control "$seed" train "${common[@]}" --lr "$lr" \
      --iterations "$(adapt_iterations "$OUT/lse-s$seed")"
    run_arm self-training "$seed" adapt "${common[@]}" --p-schedule "$PSCHED" --lr "$lr" \
      --focal true --window-scale 1.0
    if [ "${LSE_BENCH_NOFOCAL:-1}" = 1 ]; then # the ablation; LSE_BENCH_NOFOCAL=0 skips it
      run_arm lse-nofocal "$seed" adapt "${common[@]}" --p-schedule "$PSCHED" --lr "$lr" --focal false
    fi
    # The oracle once, after the first seed's arms (LSE_BENCH_ORACLE=0 skips it, e.g.
    # in a second instance running other seeds beside the first).
    if [ "$first" = 1 ] && [ "${LSE_BENCH_ORACLE:-1}" = 1 ]; then
      run_arm oracle 0 train --source "cityscapes:$DATA/target" --target "cityscapes:$DATA/target" \
        --source-size "$SIZE" --target-size "$SIZE" --batch-size "$BATCH" --device cpu \
        --threads "$THREADS" --quiet --lr "$ORACLE_LR" --iterations "$ORACLE_ITERS"
      first=0
    fi
    "$PY" scripts/bench_adapt.py report "$OUT" "$RESULTS" "$regen"
  done
}

case "$MODE" in
  tune) tune ;;
  report) ;;
  all) tune; arms ;;
  *) echo "usage: scripts/bench-adapt.sh [all|tune|report]" >&2; exit 2 ;;
esac
"$PY" scripts/bench_adapt.py report "$OUT" "$RESULTS" "$regen"
echo "[bench] wrote $RESULTS" >&2
