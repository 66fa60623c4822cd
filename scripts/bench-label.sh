#!/usr/bin/env bash
# Benchmark: `lse label` vs the model alone (python onnxruntime session.run) and vs a
# straightforward Python pipeline, on the same generated Cityscapes-size tree with the
# same small model and the same number of threads.
#
#   scripts/bench-label.sh [IMAGES (40)] [SIZE (2048x1024)]
#   env: THREADS (default: all cores), BATCH (lse batch, default 1),
#        REPEAT (alternating rounds of lse and the model alone, default 2),
#        PYTHON=0 (skip the Python pipeline and the pixel comparison),
#        WORK (default: target/bench-label), WIDTH (model width, default 0.125),
#        INT8=0 (skip the int8 rows), INT8_CKPT (default models/default's checkpoint),
#        INT8_SIZE (the int8 rows' timing size, default 1024x512)
#
# Prints images/s of each; lse's wall time over the model-alone time (median of the
# rounds, goal <= 1.2x); the Python pipeline's time over lse's (goal >= 2x); peak RSS
# (goal <= 1 GiB for lse); the fraction of pixels on which lse and Python differ.
# Then int8 vs float32 for a trained checkpoint: `lse-train export --precision int8`
# calibrated on 200 synthetic target-train images, and ONNX Runtime's own quantiser
# (quantize_static, QDQ) on the same images: the model alone's images/s at INT8_SIZE,
# the mIoU on the labelled target val at the model's size, the file size.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

N="${1:-40}"
SIZE="${2:-2048x1024}"
THREADS="${THREADS:-$(nproc)}"
BATCH="${BATCH:-1}"
REPEAT="${REPEAT:-2}"
extra=()
[ "${PYTHON:-1}" = 0 ] && extra+=(--no-python)
WORK="${WORK:-$root/target/bench-label}"
WIDTH="${WIDTH:-0.125}"
PY="$root/.venv/bin/python"
[ -x "$PY" ] || { echo "bench-label: $PY missing; run scripts/setup.sh" >&2; exit 1; }

say() { printf '[bench-label] %s\n' "$*" >&2; }

say "building lse (release)"
cargo build --release -q -p lse-runtime --bin lse
LSE="$root/target/release/lse"

TRAIN=""
for p in target/release/lse-train target/debug/lse-train; do
  [ -x "$p" ] && { TRAIN="$root/$p"; break; }
done
if [ -z "$TRAIN" ]; then
  say "building lse-train (debug)"
  cargo build -q -p lse-trainer --bin lse-train
  TRAIN="$root/target/debug/lse-train"
fi

mkdir -p "$WORK"
MODEL="$WORK/model-w$WIDTH.onnx"
if [ ! -f "$MODEL" ]; then
  say "exporting a width-$WIDTH FCN8s (training size 1024x512)"
  "$TRAIN" init --width "$WIDTH" --classes 19 --seed 0 --out "$WORK/model-w$WIDTH.safetensors" >/dev/null
  "$TRAIN" export "$WORK/model-w$WIDTH.safetensors" --out "$MODEL" --train-size 1024x512 >/dev/null
fi

DATA="$WORK/data-$N-$SIZE"
if [ ! -d "$DATA/target/leftImg8bit/val" ]; then
  say "generating $N images of $SIZE"
  "$LSE" synth --train 0 --val "$N" --size "$SIZE" --seed 0 --out "$DATA" >/dev/null
fi

say "labelling with lse, the model alone and the Python pipeline ($THREADS threads)"
"$PY" "$root/scripts/bench_label.py" compare --lse "$LSE" --model "$MODEL" \
  --input "$DATA/target/leftImg8bit/val" --work "$WORK" --threads "$THREADS" --batch "$BATCH" \
  --repeat "$REPEAT" "${extra[@]}"

[ "${INT8:-1}" = 1 ] || exit 0
CKPT="${INT8_CKPT:-$root/models/default/checkpoint.safetensors}"
Q="$WORK/int8"
QDATA="$Q/data"
mkdir -p "$Q"
if [ ! -d "$QDATA/target/leftImg8bit/val" ]; then
  say "generating 250 target-train (calibration) and 100 labelled val images (source-camera, 256x128)"
  "$LSE" synth --train 250 --val 100 --size 256x128 --seed 0 \
    --domains "$root/scripts/regimes/source-camera.json" --out "$QDATA" >/dev/null
fi
say "exporting $CKPT in float32 and in int8 (calibrated on 200 target-train images)"
"$TRAIN" export "$CKPT" --out "$Q/model-fp32.onnx" >/dev/null
"$TRAIN" export "$CKPT" --out "$Q/model-int8.onnx" --precision int8 \
  --calibrate "cityscapes:$QDATA/target" --json >"$Q/int8-export.json"
say "int8 vs float32, with ONNX Runtime's quantiser on the same calibration images"
"$PY" "$root/scripts/bench_label.py" int8 --fp32 "$Q/model-fp32.onnx" --int8 "$Q/model-int8.onnx" \
  --report "$Q/int8-export.json" --calib-root "$QDATA/target" \
  --val "$QDATA/target/leftImg8bit/val" --gt "$QDATA/target/gtFine/val" --work "$Q" \
  --size "${INT8_SIZE:-1024x512}" --threads "$THREADS" --repeat "$REPEAT"
