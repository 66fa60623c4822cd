#!/usr/bin/env bash
# Writes the tiny model of the integration tests, test-support/models/tiny/model.onnx:
# an untrained VGG16-FCN8s of width 1/128 (19 classes, initialisation seed 1) exported
# at a 64x32 training size. Every layer is there (channels 1 to 32 instead of 64 to
# 4096); most of its ~450 KiB are the three fixed 19-class upsampling kernels.
#
#   scripts/make-test-model.sh         # builds lse-train (debug) and rewrites the committed model
#   scripts/make-test-model.sh DIR     # writes DIR/model.onnx instead
#
# LSE_TRAIN=path/to/lse-train runs that binary instead of building one. The trainer's
# test `tiny_model::committed_tiny_model_is_what_the_exporter_makes` runs this script
# with its own build and compares the result with the committed file.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/test-support/models/tiny}"

if [ -z "${LSE_TRAIN:-}" ]; then
  (cd "$root" && cargo build -q -p lse-trainer --bin lse-train)
  LSE_TRAIN="$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}")/debug/lse-train"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
RUST_LOG=warn "$LSE_TRAIN" init --width 0.0078125 --classes 19 --seed 1 \
  --out "$tmp/tiny.safetensors" >/dev/null
RUST_LOG=warn "$LSE_TRAIN" export "$tmp/tiny.safetensors" --out "$out/model.onnx" \
  --train-size 64x32 >/dev/null
echo "[make-test-model] wrote $out/model.onnx" >&2
