#!/usr/bin/env bash
# The regime search's measurement: the paper's premise for the committed source model
# (models/source-synth) on the labelled tuning split (seed 1000, never val) of each
# candidate target domain: lse synth's built-in one and every scripts/regimes/*.json.
# Prints one markdown table (the one in docs/synthetic-domains.md); resumes.
#
#   scripts/premise-sweep.sh                 # all candidates
#   scripts/premise-sweep.sh source-camera   # some of them
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source "$root/scripts/lib/regime.sh"

SIZE="${LSE_PREMISE_SIZE:-256x128}"
IMAGES="${LSE_PREMISE_IMAGES:-60}"
THREADS="${LSE_PREMISE_THREADS:-$(nproc)}"
MODEL="${LSE_PREMISE_MODEL:-$root/models/source-synth/checkpoint.safetensors}"
OUT="${LSE_PREMISE_OUT:-$root/out/premise-$SIZE}"
BIN="${LSE_BENCH_BIN:-$root/target/release}"
source "$root/scripts/lib/build.sh"
release_build

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  read -r -a names <<< "default $(regime_names)"
fi
for name in "${names[@]}"; do
  dir="$OUT/$name"
  [ -f "$dir/premise.json" ] && continue
  regime_domains "$name" "premise-sweep.sh"
  if [ ! -f "$dir/data/synth.json" ]; then
    rm -rf "$dir/data"
    "$BIN/lse" synth --out "$dir/data" --train 0 --val "$IMAGES" --size "$SIZE" --seed 1000 \
      "${domains[@]}" --json > /dev/null
  fi
  echo "[premise] $name" >&2
  "$BIN/lse-train" premise "$MODEL" --target "cityscapes:$dir/data/target" --split val \
    --scales 0.5,0.75 --device cpu --threads "$THREADS" --json > "$dir/premise.json.tmp"
  mv "$dir/premise.json.tmp" "$dir/premise.json"
done

"$root/.venv/bin/python" - "$OUT" "${names[@]}" <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
print("| target | acc. full % | confident errors | largest confident confusion | H full | H windows | ratio | window acc. % | pseudo-label acc. % | gap |")
print("|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    r = json.load(open(os.path.join(out, n, "premise.json")))
    s = next(x for x in r["scales"] if x["scale"] == 0.5)
    c = r["confident_confusions"][0] if r["confident_confusions"] else None
    top = f"{c['truth']} → {c['predicted']} {c['share_of_errors'] * 100:.1f} %" if c else "–"
    print(f"| {n} | {r['target_accuracy'] * 100:.1f} | {r['confident_error_share'] * 100:.1f} % | {top} "
          f"| {r['target_entropy']:.4f} | {s['window_entropy']:.4f} | {s['entropy_ratio']:.3f} "
          f"| {s['window_accuracy'] * 100:.1f} | {s['pseudo_label_accuracy'] * 100:.1f} "
          f"| {(s['pseudo_label_accuracy'] - s['window_accuracy']) * 100:+.1f} |")
PY
