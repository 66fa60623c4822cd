#!/usr/bin/env bash
# The main job end to end on the built-in synthetic domains, sized for a laptop
# (about 10 minutes on 2 CPU cores):
#   synth → init → train (source only) → adapt (LSE) → export → label target val → eval
# and prints source-only vs adapted mIoU side by side. The adapted model becomes the
# project's default model (models/default) unless LSE_DEMO_KEEP_DEFAULT=1.
#
# Sizes can be changed through the environment, e.g.
#   LSE_DEMO_TRAIN=400 LSE_DEMO_ITERS=1500 scripts/demo.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
echo "[demo] building (release)" >&2
cargo build --release --workspace --bins -q

OUT="${LSE_DEMO_OUT:-$root/out/demo}"
TRAIN="${LSE_DEMO_TRAIN:-300}"        # source images and target-train images
VAL="${LSE_DEMO_VAL:-60}"             # target-val images
SIZE="${LSE_DEMO_SIZE:-128x64}"       # image and training size
WIDTH="${LSE_DEMO_WIDTH:-0.125}"      # channel width multiplier (1/8: small variant)
ITERS="${LSE_DEMO_ITERS:-1200}"       # source-only iterations
BATCH="${LSE_DEMO_BATCH:-4}"
LR="${LSE_DEMO_LR:-1e-3}"             # from scratch (docs/method.md's 1e-6 is for fine-tuning)
ADAPT_LR="${LSE_DEMO_ADAPT_LR:-1e-4}" # adaptation fine-tunes the source model: 10x lower
PSCHED="${LSE_DEMO_P:-0.1,0.15,0.2}"  # adaptation rounds (the paper runs 0.10 .. 0.40)
SEED="${LSE_DEMO_SEED:-0}"
THREADS="${LSE_DEMO_THREADS:-$(nproc)}"
BIN="$root/target/release"

rm -rf "$OUT"; mkdir -p "$OUT"
t0=$(date +%s)
echo "[demo] 1/7 synthetic domains: $TRAIN source, $TRAIN target-train, $VAL target-val at $SIZE" >&2
"$BIN/lse" synth --out "$OUT/data" --train "$TRAIN" --val "$VAL" --size "$SIZE" --seed "$SEED"

echo "[demo] 2/7 init VGG16-FCN8s (width $WIDTH, from scratch)" >&2
"$BIN/lse-train" init --width "$WIDTH" --classes 19 --init scratch --seed "$SEED" --out "$OUT/init.safetensors"

common=(--source "gta5:$OUT/data/source" --target "cityscapes:$OUT/data/target"
        --source-size "$SIZE" --target-size "$SIZE" --batch-size "$BATCH"
        --seed "$SEED" --device cpu --threads "$THREADS")

echo "[demo] 3/7 source-only training ($ITERS iterations)" >&2
"$BIN/lse-train" train --init "$OUT/init.safetensors" --out "$OUT/source-only" --iterations "$ITERS" --lr "$LR" "${common[@]}"

echo "[demo] 4/7 LSE adaptation (rounds p = $PSCHED)" >&2
"$BIN/lse-train" adapt --init "$OUT/source-only/model.safetensors" --out "$OUT/lse" --p-schedule "$PSCHED" --lr "$ADAPT_LR" "${common[@]}"

echo "[demo] 5/7 export both models to ONNX (with parity check)" >&2
"$BIN/lse-train" export "$OUT/source-only/model.safetensors" --out "$OUT/source-only/model.onnx"
"$BIN/lse-train" export "$OUT/lse/model.safetensors" --out "$OUT/lse/model.onnx"

echo "[demo] 6/7 label the target val set with both models" >&2
for m in source-only lse; do
  "$BIN/lse" label "$OUT/$m/model.onnx" "$OUT/data/target/leftImg8bit/val" --out "$OUT/$m/pred" --color --overwrite
done

echo "[demo] 7/7 evaluate (Cityscapes protocol)" >&2
for m in source-only lse; do
  "$BIN/lse" eval --pred "$OUT/$m/pred" --gt "$OUT/data/target/gtFine/val" --json > "$OUT/$m/eval.json"
done

miou() { "$root/.venv/bin/python" -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["miou"])' "$1"; }
so=$(miou "$OUT/source-only/eval.json"); ad=$(miou "$OUT/lse/eval.json")

if [ "${LSE_DEMO_KEEP_DEFAULT:-0}" != "1" ]; then
  mkdir -p models/default
  cp "$OUT/lse/model.onnx" models/default/model.onnx
  cp "$OUT/lse/model.safetensors" models/default/checkpoint.safetensors
  cp "$OUT/lse/run.json" models/default/run.json 2>/dev/null || true
  cp "$OUT/lse/config.toml" models/default/config.toml 2>/dev/null || true
  cp "$OUT/lse/eval.json" models/default/eval.json
fi

t1=$(date +%s)
cat <<REPORT

LSE demo: synthetic GTA5-layout source -> synthetic Cityscapes-layout target (val: $VAL images at $SIZE)
  model                 mIoU (19 classes)
  source-only           $so
  LSE-adapted           $ad

outputs
  data                  $OUT/data
  source-only run       $OUT/source-only   (model.onnx, pred/, eval.json)
  LSE run               $OUT/lse           (run.json, metrics.jsonl, curves.png, model.onnx, pred/, eval.json)
  default model         $root/models/default/model.onnx
  total time            $((t1 - t0)) s
REPORT
