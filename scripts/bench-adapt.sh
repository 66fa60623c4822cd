#!/usr/bin/env bash
# The paper's comparison on the built-in synthetic domains, from one committed
# source-only model (scripts/train-source.sh), and docs/results.md from it.
#
#   scripts/bench-adapt.sh              # tune, ablate, then every arm x seed, then the table
#   scripts/bench-adapt.sh tune         # only the learning-rate choice on the tuning split
#   scripts/bench-adapt.sh ablate       # the lr choice, then the window variants on the
#                                       # tuning split and the choice among them
#   scripts/bench-adapt.sh report       # only rewrite the results page from finished arms
#   LSE_BENCH_REGIME=source-camera scripts/bench-adapt.sh
#                                       # the same with the target domain of
#                                       # scripts/regimes/NAME.json (lse synth --domains),
#                                       # into docs/results-NAME.md
#   LSE_BENCH_CHOICE_FROM=source-camera LSE_BENCH_ARMS="lse-chosen self-training control" \
#     scripts/bench-adapt.sh          # adopt that regime's tuning-split choices (lr and
#                                       # window variant) unchanged instead of tuning here,
#                                       # and run only the named val arms
#   LSE_BENCH_PROTOCOL=short scripts/bench-adapt.sh
#                                       # the earlier, shorter protocol (batch 4, 3 rounds)
#                                       # into docs/results[-NAME]-short.md
#
# Protocols:
#   reference (default)  the reference code's: batch 1 (one source image and one example
#                        per iteration), p = 0.10 ... 0.40 (7 rounds), Adam (0.9, 0.99);
#                        lr from LSE_BENCH_LRS (1e-6, the reference's, 3e-6, 1e-5)
#   short                batch 4, p = 0.10, 0.15, 0.20; lr from 1e-5, 1e-4
#
# Arms, each seed from the same source model and data:
#   source-only    the source model itself
#   control        source-only training continued for as many iterations as the compared
#                  LSE arm ran (same lr, batch and source batches)
#   self-training  the LSE round with window scale 1.0 (no zoom), same selection/thresholds
#   lse            LSE with the reference's window settings (the paper's method)
#   lse-chosen     LSE with the window variant chosen on the tuning split (only when the
#                  choice is not the reference's)
#   lse-nofocal    the compared LSE arm without the focal term
#   oracle         the source model fine-tuned on the target-train labels (seed 0 only)
# Choices, on a separate labelled tuning split of the target (its own seed; never val):
#   1. the adaptation learning rate, by LSE's mIoU after the last round, from
#      LSE_BENCH_LRS (OUT/tuning.json), used by every arm;
#   2. the window variant (placement grid, masks nearest / any-ignored, their best
#      combination, multi-scale windows), by the same criterion (OUT/choice.json, copied
#      to docs/results[-NAME]-choice.json). The val arms of a chosen variant run only once
#      that file is committed: the choice is on record before any val number of it exists.
#
# It resumes: a finished arm is skipped, an interrupted one continues (--resume).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

MODE="${1:-all}"
SIZE="${LSE_BENCH_SIZE:-256x128}"
SEEDS="${LSE_BENCH_SEEDS:-0 1 2}"
PROTOCOL="${LSE_BENCH_PROTOCOL:-reference}"
case "$PROTOCOL" in
  reference) psched=0.1,0.15,0.2,0.25,0.3,0.35,0.4; batch=1; lrs="1e-6 3e-6 1e-5"; psfx="-ref" ;;
  short) psched=0.1,0.15,0.2; batch=4; lrs="1e-5 1e-4"; psfx="" ;;
  *) echo "LSE_BENCH_PROTOCOL must be reference or short, not '$PROTOCOL'" >&2; exit 2 ;;
esac
PSCHED="${LSE_BENCH_P:-$psched}"
BATCH="${LSE_BENCH_BATCH:-$batch}"
LRS="${LSE_BENCH_LRS:-$lrs}"                # candidates, chosen on the tuning split
ORACLE_ITERS="${LSE_BENCH_ORACLE_ITERS:-1500}"
ORACLE_LR="${LSE_BENCH_ORACLE_LR:-1e-4}"
THREADS="${LSE_BENCH_THREADS:-$(nproc)}"
NTRAIN="${LSE_BENCH_TRAIN:-400}"            # source images and target-train images adapted on
NVAL="${LSE_BENCH_VAL:-100}"                # target-val images (reported)
REGIME="${LSE_BENCH_REGIME:-default}"      # default: lse synth's built-in domains
CHOICE_FROM="${LSE_BENCH_CHOICE_FROM:-}"   # a regime whose tuning-split choices are adopted
# The val arms to run; LSE_BENCH_NOFOCAL=0 and LSE_BENCH_ORACLE=0 (e.g. in an instance
# running other seeds beside the first) drop the ablation and the oracle from the default.
default_arms="lse-chosen self-training control lse"
if [ "${LSE_BENCH_NOFOCAL:-1}" = 1 ]; then default_arms+=" lse-nofocal"; fi
if [ "${LSE_BENCH_ORACLE:-1}" = 1 ]; then default_arms+=" oracle"; fi
VAL_ARMS="${LSE_BENCH_ARMS:-$default_arms}"
source "$root/scripts/lib/regime.sh"
regime_domains "$REGIME" LSE_BENCH_REGIME
if [ "$REGIME" = default ]; then
  sfx=""; regen="scripts/bench-adapt.sh"
else
  sfx="-$REGIME"; regen="LSE_BENCH_REGIME=$REGIME scripts/bench-adapt.sh"
fi
if [ "$PROTOCOL" = short ]; then
  dsfx="-short"; regen="LSE_BENCH_PROTOCOL=short $regen"
else
  dsfx=""
fi
SRC_DATA="${LSE_BENCH_SOURCE_DATA:-$root/out/bench/data-$SIZE}"   # the source model's data
DATA="${LSE_BENCH_DATA:-$root/out/bench/data-$SIZE-n$NTRAIN$sfx}"
TUNE_DATA="$SRC_DATA-tune$sfx"
SRC="${LSE_BENCH_SOURCE:-$root/models/source-synth/checkpoint.safetensors}"
# bench_out SUFFIX: the runs of the regime with that suffix ("" or -NAME), this protocol.
bench_out() { echo "$root/out/bench/adapt-$SIZE-n$NTRAIN$1$psfx"; }
OUT="${LSE_BENCH_OUT:-$(bench_out "$sfx")}"
RESULTS="${LSE_BENCH_RESULTS:-$root/docs/results$sfx$dsfx.md}"
CHOICE_RECORD="${RESULTS%.md}-choice.json"   # the committed record of the variant choice
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

# LSE_BENCH_CHOICE_FROM=NAME: the lr and window variant chosen on regime NAME's tuning
# split, unchanged (OUT/tuning.json and OUT/choice.json, marked as adopted).
adopt_choices() {
  "$PY" scripts/bench_adapt.py adopt "$(bench_out "-$CHOICE_FROM")" "$OUT" "$CHOICE_FROM"
}

tune() {
  if [ -f "$OUT/tuning.json" ]; then return 0; fi
  if [ -n "$CHOICE_FROM" ]; then adopt_choices; return 0; fi
  for lr in $LRS; do
    run_arm "tune-lse-lr$lr" 0 adapt "${common[@]}" --p-schedule "$PSCHED" --lr "$lr" \
      --focal true --set val_split=tune
  done
  "$PY" scripts/bench_adapt.py choose "$OUT" "$LRS" > "$OUT/tuning.json.tmp"
  mv "$OUT/tuning.json.tmp" "$OUT/tuning.json"
  echo "[bench] chosen on the tuning split: $(cat "$OUT/tuning.json")" >&2
}

chosen_lr() {
  "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["lr"])' "$OUT/tuning.json"
}

# The window variants and their lse-train flags (bench_adapt.py variant-args NAME).
variant_args() { "$PY" scripts/bench_adapt.py variant-args "$1"; }

# tune_variant NAME: LSE with the variant's windows on the tuning split, seed 0.
tune_variant() {
  local lr; lr=$(chosen_lr)
  local -a extra; read -r -a extra <<< "$(variant_args "$1")"
  if [ "$1" = reference ]; then # the reference is the lr run already made
    return 0
  fi
  run_arm "tune-$1" 0 adapt "${common[@]}" --p-schedule "$PSCHED" --lr "$lr" \
    --focal true --set val_split=tune "${extra[@]}"
}

# The ablation on the tuning split: placement, each mask, their best combination, then
# multi-scale windows on the best so far; the choice into OUT/choice.json and the
# committed record.
ablate() {
  tune
  if [ ! -f "$OUT/choice.json" ]; then
    for v in grid nearest any-ignored; do tune_variant "$v"; done
    local combo; combo=$("$PY" scripts/bench_adapt.py combination "$OUT")
    if [ -n "$combo" ]; then tune_variant "$combo"; fi
    local multi; multi=$("$PY" scripts/bench_adapt.py multiscale "$OUT")
    tune_variant "$multi"
    "$PY" scripts/bench_adapt.py choose-variant "$OUT" > "$OUT/choice.json.tmp"
    mv "$OUT/choice.json.tmp" "$OUT/choice.json"
  fi
  if [ ! -f "$CHOICE_RECORD" ] || ! cmp -s "$OUT/choice.json" "$CHOICE_RECORD"; then
    cp "$OUT/choice.json" "$CHOICE_RECORD"
  fi
  echo "[bench] window variant chosen on the tuning split: $(cat "$OUT/choice.json")" >&2
}

# The choice counts only once its record is committed, unchanged, before val runs.
choice_committed() {
  (cd "$root" && git ls-files --error-unmatch "$CHOICE_RECORD" >/dev/null 2>&1 \
    && git diff --quiet HEAD -- "$CHOICE_RECORD")
}

wanted() { case " $VAL_ARMS " in *" $1 "*) return 0 ;; esac; return 1; }

# val_arm NAME ...: run_arm, for the arms named in LSE_BENCH_ARMS only.
val_arm() {
  if wanted "$1"; then run_arm "$@"; fi
}

arms() {
  local lr variant
  lr=$(chosen_lr)
  variant=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["variant"])' "$OUT/choice.json")
  local -a vargs; read -r -a vargs <<< "$(variant_args "$variant")"
  if [ "$variant" != reference ] && ! choice_committed; then
    echo "[bench] commit $CHOICE_RECORD (the choice, made on the tuning split) before any val run of it" >&2
    exit 3
  fi
  echo "[bench] adaptation lr $lr, window variant $variant (chosen on the tuning split)" >&2
  if [ ! -f "$OUT/source-only/eval.json" ]; then
    mkdir -p "$OUT/source-only"
    "$BIN/lse-train" eval "$SRC" --target "cityscapes:$DATA/target" --split val --json \
      --device cpu --threads "$THREADS" > "$OUT/source-only/eval.json.tmp"
    mv "$OUT/source-only/eval.json.tmp" "$OUT/source-only/eval.json"
  fi
  local adapt=(adapt "${common[@]}" --p-schedule "$PSCHED" --lr "$lr")
  local first=1 compared
  # The arms the goal compares first (the chosen LSE, self-training, the control), then
  # LSE at the reference's settings and the ablation, so that an interrupted table
  # holds the goal's comparison.
  for seed in $SEEDS; do
    compared=lse
    if [ "$variant" != reference ]; then
      val_arm lse-chosen "$seed" "${adapt[@]}" --focal true "${vargs[@]}"
      compared=lse-chosen
    fi
    val_arm self-training "$seed" "${adapt[@]}" --focal true --window-scale 1.0
    if wanted control; then # as many iterations as the compared LSE run
      run_arm control "$seed" train "${common[@]}" --lr "$lr" \
        --iterations "$(adapt_iterations "$OUT/$compared-s$seed")"
    fi
    val_arm lse "$seed" "${adapt[@]}" --focal true
    val_arm lse-nofocal "$seed" "${adapt[@]}" --focal false "${vargs[@]}"
    # The oracle once, after the first seed's arms.
    if [ "$first" = 1 ]; then
      val_arm oracle 0 train --source "cityscapes:$DATA/target" --target "cityscapes:$DATA/target" \
        --source-size "$SIZE" --target-size "$SIZE" --batch-size "$BATCH" --device cpu \
        --threads "$THREADS" --quiet --lr "$ORACLE_LR" --iterations "$ORACLE_ITERS"
      first=0
    fi
    report
  done
}

report() {
  "$PY" scripts/bench_adapt.py report "$OUT" "$RESULTS" "$regen" "$PROTOCOL"
}

case "$MODE" in
  tune) tune ;;
  ablate) ablate ;;
  report) ;;
  all) ablate; arms ;;
  *) echo "usage: scripts/bench-adapt.sh [all|tune|ablate|report]" >&2; exit 2 ;;
esac
report
echo "[bench] wrote $RESULTS" >&2
