#!/usr/bin/env bash
# Trains the committed source-only model of the synthetic benchmark (the counterpart of
# the paper's released source models) and publishes it under models/.
#
#   scripts/train-source.sh            # resumes where it stopped; a finished step is skipped
#
# Steps: generate the synthetic pair (source, target train/val) and a separate labelled
# tuning split of the target (its own seed, used to choose settings, never reported),
# initialise a 1/8-width VGG16-FCN8s from scratch, train it on the labelled source only,
# evaluate it on the target val split, export and publish it. Every size is an
# environment variable below. It never reads target-train labels.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

SIZE="${LSE_SRC_SIZE:-256x128}"           # image, training and model size
TRAIN="${LSE_SRC_TRAIN:-1000}"            # source images and target-train images
VAL="${LSE_SRC_VAL:-100}"                 # target-val images (reported)
TUNE="${LSE_SRC_TUNE:-60}"                # target tuning images (choose settings here)
WIDTH="${LSE_SRC_WIDTH:-0.125}"
ITERS="${LSE_SRC_ITERS:-5000}"
BATCH="${LSE_SRC_BATCH:-4}"
LR="${LSE_SRC_LR:-1e-3}"
DECAY_EVERY="${LSE_SRC_DECAY_EVERY:-4000}" # lr x 0.1 after this many iterations
SEED="${LSE_SRC_SEED:-0}"
THREADS="${LSE_SRC_THREADS:-$(nproc)}"
DATA="${LSE_BENCH_DATA:-$root/out/bench/data-$SIZE}"
RUN="${LSE_SRC_RUN:-$root/out/bench/source-$SIZE}"
MODEL="${LSE_SRC_MODEL:-$root/models/source-synth}"
BIN="$root/target/release"

source "$root/scripts/lib/build.sh"
release_build

if [ ! -f "$DATA/synth.json" ]; then
  echo "[source] synthetic pair: $TRAIN source, $TRAIN target-train, $VAL val at $SIZE (seed $SEED)" >&2
  rm -rf "$DATA"
  "$BIN/lse" synth --out "$DATA" --train "$TRAIN" --val "$VAL" --size "$SIZE" --seed "$SEED"
fi
# The tuning split: a second draw of the target domain with its own seed; only its val
# split (labelled) is used.
if [ ! -f "$DATA-tune/synth.json" ]; then
  echo "[source] tuning split: $TUNE target images (seed $((SEED + 1000)))" >&2
  rm -rf "$DATA-tune"
  "$BIN/lse" synth --out "$DATA-tune" --train 0 --val "$TUNE" --size "$SIZE" --seed "$((SEED + 1000))"
fi

mkdir -p "$(dirname "$RUN")"
common=(--source "gta5:$DATA/source" --target "cityscapes:$DATA/target"
        --source-size "$SIZE" --target-size "$SIZE" --batch-size "$BATCH"
        --seed "$SEED" --device cpu --threads "$THREADS")
if [ -f "$RUN/model.safetensors" ]; then
  echo "[source] $RUN is finished" >&2
elif [ -f "$RUN/run.json" ]; then
  echo "[source] resuming $RUN" >&2
  "$BIN/lse-train" train --resume "$RUN" --threads "$THREADS" --device cpu
else
  "$BIN/lse-train" init --width "$WIDTH" --classes 19 --init scratch --seed "$SEED" --out "$RUN.init.safetensors"
  "$BIN/lse-train" train --init "$RUN.init.safetensors" --out "$RUN" --iterations "$ITERS" --lr "$LR" \
    --set lr_decay_every="$DECAY_EVERY" --checkpoint-every 250 "${common[@]}"
fi
if [ ! -f "$MODEL/model.onnx" ] || [ "$RUN/model.safetensors" -nt "$MODEL/model.onnx" ]; then
  "$BIN/lse-train" publish "$RUN" --out "$MODEL" --name source-synth
fi
echo "[source] source-only model: $MODEL (run: $RUN)" >&2
