#!/usr/bin/env bash
# The main job end to end on the built-in synthetic domains (about 10 minutes on 2
# CPU cores after set-up):
#   synth -> LSE adaptation of the committed source-only model (models/source-synth)
#   -> export -> label the target val set with both models -> evaluate -> side by side
# The adapted model is published as the project's default model (models/default)
# unless LSE_DEMO_KEEP_DEFAULT=1. LSE_DEMO_FROM_SCRATCH=1 first retrains the source
# model (scripts/train-source.sh, about an hour on 2 cores).
#
# Sizes can be changed through the environment, e.g.
#   LSE_DEMO_TRAIN=300 LSE_DEMO_P=0.1,0.15 scripts/demo.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
echo "[demo] building (release)" >&2
cargo build --release --workspace --bins -q

OUT="${LSE_DEMO_OUT:-$root/out/demo}"
SIZE="${LSE_DEMO_SIZE:-256x128}"      # the committed source model's size
TRAIN="${LSE_DEMO_TRAIN:-400}"        # source and target-train images (as scripts/bench-adapt.sh)
VAL="${LSE_DEMO_VAL:-100}"            # target-val images
# The adaptation as the benchmark's choice runs it (docs/results-source-camera.md): the
# reference's batch 1, lr 1e-6 chosen on the tuning split, and the window variant chosen
# there (docs/results-source-camera-choice.json: windows on a grid, scales 0.5 and 0.75).
# Only the rounds are cut, to fit the demo's 10 minutes: 3 of the reference's 7.
BATCH="${LSE_DEMO_BATCH:-1}"
ADAPT_LR="${LSE_DEMO_ADAPT_LR:-1e-6}"
PSCHED="${LSE_DEMO_P:-0.1,0.15,0.2}"  # adaptation rounds (the reference runs 0.10 .. 0.40)
read -r -a WINDOWS <<< "${LSE_DEMO_WINDOWS:---window-placement grid --window-scale 0.5,0.75}"
SEED="${LSE_DEMO_SEED:-0}"            # the data seed of the source model
THREADS="${LSE_DEMO_THREADS:-$(nproc)}"
SRC_MODEL="${LSE_DEMO_SOURCE_MODEL:-$root/models/source-synth}"
# The target domain: NAME uses scripts/regimes/NAME.json (lse synth --domains),
# `default` lse synth's built-in target. source-camera (the target's appearance seen
# through the source's camera) is where the paper's premise holds best on the tuning
# split (scripts/premise-sweep.sh, docs/synthetic-domains.md).
REGIME="${LSE_DEMO_REGIME:-source-camera}"
source "$root/scripts/lib/regime.sh"
regime_domains "$REGIME" LSE_DEMO_REGIME
BIN="$root/target/release"
PY="$root/.venv/bin/python"

rm -rf "$OUT"; mkdir -p "$OUT"
t0=$(date +%s)
if [ "${LSE_DEMO_FROM_SCRATCH:-0}" = "1" ]; then
  echo "[demo] 0/6 retraining the source-only model (scripts/train-source.sh)" >&2
  LSE_SKIP_BUILD=1 LSE_SRC_SIZE="$SIZE" LSE_SRC_MODEL="$SRC_MODEL" bash scripts/train-source.sh
fi
[ -f "$SRC_MODEL/checkpoint.safetensors" ] || {
  echo "[demo] error: no source model in $SRC_MODEL (LSE_DEMO_FROM_SCRATCH=1 trains one)" >&2; exit 1; }

echo "[demo] 1/6 synthetic domains: $TRAIN source, $TRAIN target-train, $VAL target-val at $SIZE (seed $SEED, target $REGIME)" >&2
"$BIN/lse" synth --out "$OUT/data" --train "$TRAIN" --val "$VAL" --size "$SIZE" --seed "$SEED" \
  "${domains[@]}"

echo "[demo] 2/6 LSE adaptation of $SRC_MODEL (rounds p = $PSCHED, lr $ADAPT_LR, batch $BATCH, ${WINDOWS[*]})" >&2
"$BIN/lse-train" adapt --init "$SRC_MODEL/checkpoint.safetensors" --out "$OUT/lse" \
  --source "gta5:$OUT/data/source" --target "cityscapes:$OUT/data/target" \
  --source-size "$SIZE" --target-size "$SIZE" --batch-size "$BATCH" --seed "$SEED" \
  --p-schedule "$PSCHED" --lr "$ADAPT_LR" "${WINDOWS[@]}" --device cpu --threads "$THREADS"

echo "[demo] 3/6 export the adapted model to ONNX (with parity check)" >&2
mkdir -p "$OUT/source-only"
cp "$SRC_MODEL/model.onnx" "$OUT/source-only/model.onnx"
"$BIN/lse-train" export "$OUT/lse/model.safetensors" --out "$OUT/lse/model.onnx"

echo "[demo] 4/6 label the target val set with both models" >&2
for m in source-only lse; do
  "$BIN/lse" label "$OUT/$m/model.onnx" "$OUT/data/target/leftImg8bit/val" --out "$OUT/$m/pred" --color --overwrite
done

echo "[demo] 5/6 evaluate (Cityscapes protocol)" >&2
for m in source-only lse; do
  "$BIN/lse" eval --pred "$OUT/$m/pred" --gt "$OUT/data/target/gtFine/val" --json > "$OUT/$m/eval.json"
done

if [ "${LSE_DEMO_KEEP_DEFAULT:-0}" != "1" ]; then
  echo "[demo] 6/6 publish the adapted model as models/default" >&2
  "$BIN/lse-train" publish "$OUT/lse" --out models/default --name default --eval "$OUT/lse/eval.json"
fi

t1=$(date +%s)
"$PY" - "$OUT" "$VAL" "$SIZE" "$((t1 - t0))" "$root" "$REGIME" <<'PY'
import json, sys
out, val, size, secs, root, regime = sys.argv[1:]
miou = lambda m: json.load(open(f"{out}/{m}/eval.json"))["miou"] * 100
rec = json.load(open(f"{out}/lse/run.json"))
pct = lambda v: "   –" if v is None else f"{v * 100:5.1f}"
print(f"\nLSE demo: synthetic GTA5-layout source -> synthetic Cityscapes-layout target "
      f"({regime} target; val: {val} images at {size})")
print("  round   p     |S|  kept %  kept precision %  val mIoU %")
for r in rec["rounds"]:
    d = r.get("diagnostics") or {}
    m = "   –" if r.get("miou") is None else f"{r['miou'] * 100:6.2f}"
    print(f"  {r['round']:>5}  {r['p']:.2f}  {r['confident']:>4}  {pct(d.get('kept_share'))}  "
          f"{pct(d.get('kept_precision')):>16}  {m:>10}")
print("\n  model                 mIoU % (19 classes)")
print(f"  source-only           {miou('source-only'):.2f}")
print(f"  LSE-adapted           {miou('lse'):.2f}   ({miou('lse') - miou('source-only'):+.2f})")
print("\noutputs")
print(f"  data                  {out}/data")
print(f"  LSE run               {out}/lse   (run.json, metrics.jsonl, curves.png, model.onnx, pred/, eval.json)")
print(f"  run report            {out}/lse/report.html")
print(f"  default model         {root}/models/default/model.onnx")
print(f"  total time            {secs} s")
PY
