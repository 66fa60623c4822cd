#!/usr/bin/env bash
# One prepared GPU check (issue 10). On a machine with an NVIDIA GPU, after
# `LSE_GPU=1 scripts/setup.sh`, one call (budget: under 10 minutes) builds the release
# binaries and prints one table:
#   - the full-width VGG16-FCN8s at 1024x512 on CUDA: one LSE training iteration in
#     lse-train vs PyTorch eager on the same GPU, one round's example generation, and
#     the GPU's peak memory during training (device-wide, sampled every 0.2 s);
#   - the bench matrix: cuda and tensorrt x fp32 and fp16 x batch 1 and 8, and cpu fp32
#     batch 1 as the reference (full-width model, 2048x1024 images);
#   - lse-serve at concurrency 8 vs offline (lse bench) on the same model and GPU.
# Without an NVIDIA GPU, or without the GPU set-up, it stops before building, says what
# it needs and exits with status 2.
#
#   scripts/gpu-check.sh
#   env: GPU_CHECK_WORK (default target/gpu-check), GPU_CHECK_THREADS (CPU threads, 4)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '[gpu-check] %s\n' "$*" >&2; }
need() {
  printf '[gpu-check] cannot run here. It needs: %s\n' "$*" >&2
  exit 2
}

# 1. What it needs, before anything is built.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  need "an NVIDIA GPU and its driver (nvidia-smi is missing or lists no GPU on this machine); run it on a GPU machine after LSE_GPU=1 scripts/setup.sh"
fi
PY="$root/.venv/bin/python"
[ -x "$PY" ] || need "the project's .venv: run LSE_GPU=1 scripts/setup.sh"
"$PY" -m pip show onnxruntime-gpu >/dev/null 2>&1 ||
  need "onnxruntime-gpu in .venv (the CPU wheel is installed): run LSE_GPU=1 scripts/setup.sh"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null ||
  need "CUDA in the .venv's PyTorch (torch.cuda.is_available() is False): check the driver (nvidia-smi) and LSE_GPU=1 scripts/setup.sh"

# The CUDA and TensorRT providers load the CUDA 13, cuDNN and TensorRT libraries of
# the pip wheels in .venv.
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for d in "$site"/nvidia/*/lib "$site"/tensorrt_libs; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
WORK="${GPU_CHECK_WORK:-$root/target/gpu-check}"
THREADS="${GPU_CHECK_THREADS:-4}"
mkdir -p "$WORK"
gpu="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader -i 0)"
say "GPU 0: $gpu"

# 2. Build.
say "building the release binaries"
timeout 330 cargo build --release -q --workspace --bins
bin="$root/target/release"

# 3. Training on CUDA, with the GPU's memory sampled.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 >"$WORK/mem0.txt"
(while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0; sleep 0.2; done) >"$WORK/mem.txt" 2>/dev/null &
sampler=$!
say "training iteration and example generation (full width, 1024x512, cuda)"
PROFILE=release timeout 150 scripts/bench-train.sh --width 1 --size 1024x512 --batch 1 \
  --threads "$THREADS" --runs 5 --device cuda >"$WORK/train.log" 2>&1 || say "training benchmark failed or timed out (see $WORK/train.log)"
kill "$sampler" 2>/dev/null || true

# 4. Full-width models (fp32 and fp16 exports of one fresh network).
m32="$WORK/fcn8s-w1.onnx" m16="$WORK/fcn8s-w1-fp16.onnx"
if [ ! -f "$m32" ] || [ ! -f "$m16" ]; then
  say "exporting a full-width network (fp32 and fp16, training size 1024x512)"
  "$bin/lse-train" init --width 1 --classes 19 --seed 0 --out "$WORK/w1.safetensors" >/dev/null
  timeout 120 "$bin/lse-train" export "$WORK/w1.safetensors" --out "$m32" --train-size 1024x512 >/dev/null
  timeout 120 "$bin/lse-train" export "$WORK/w1.safetensors" --out "$m16" --train-size 1024x512 --precision fp16 >/dev/null
fi

# 5. The bench matrix (TensorRT builds one engine per precision; later rows load it).
say "bench matrix"
common=(--size 2048x1024 --threads "$THREADS" --trt-cache "$WORK/trt-cache" --fp16-model "$m16")
timeout 240 "$bin/lse" bench "$m32" --matrix cuda,tensorrt --precision fp32,fp16 --batch 1,8 \
  --iters 10 "${common[@]}" >"$WORK/matrix.txt" 2>"$WORK/matrix.log" || say "bench matrix failed or timed out (see $WORK/matrix.log)"
timeout 60 "$bin/lse" bench "$m32" --matrix cpu --precision fp32 --batch 1 --iters 2 "${common[@]}" \
  >"$WORK/matrix-cpu.txt" 2>>"$WORK/matrix.log" || say "cpu row failed or timed out"

# 6. The server at concurrency 8 vs offline, on the GPU.
say "lse-serve at concurrency 8 vs offline"
BENCH_PROFILE=release BENCH_IMAGE=2048x1024 BENCH_SECONDS=10 BENCH_REQUESTS=200 BENCH_THREADS="$THREADS" \
  timeout 150 scripts/bench-server.sh --json "$m32" >"$WORK/server.json" 2>"$WORK/server.log" ||
  say "server benchmark failed or timed out (see $WORK/server.log)"

# 7. One table.
GPU="$gpu" WORK="$WORK" "$PY" - <<'EOF'
import json, os, re
work = os.environ["WORK"]
def read(name):
    try:
        return open(os.path.join(work, name)).read()
    except OSError:
        return ""
def result(text, key):
    m = re.search(rf"RESULT .*\b{key}=([0-9.]+)", text)
    return float(m.group(1)) if m else None
fmt = lambda v, unit="": "n/a" if v is None else f"{v:.1f}{unit}"
train = read("train.log")
mem = [int(x) for x in read("mem.txt").split() if x.isdigit()]
base = [int(x) for x in read("mem0.txt").split() if x.isdigit()]
peak = (max(mem) - (base[0] if base else 0)) if mem else None
print(f"GPU: {os.environ['GPU']}")
print("| full-width VGG16-FCN8s, 1024x512, CUDA | value |")
print("|---|---|")
print(f"| training iteration, lse-train | {fmt(result(train, 'rust_iter_ms'), ' ms')} |")
print(f"| training iteration, PyTorch eager | {fmt(result(train, 'torch_iter_ms'), ' ms')} |")
print(f"| ratio lse-train / PyTorch | {fmt(result(train, 'ratio'))} |")
print(f"| one image's examples (generation; bench_generate runs on the CPU) | {fmt(result(train, 'rust_ms'), ' ms')} |")
print(f"| peak GPU memory during training (above idle) | {fmt(peak, ' MiB')} |")
print()
print("bench matrix (2048x1024 images; ms/image, images/s, peak host/device MiB, first run s):")
print(read("matrix.txt") + read("matrix-cpu.txt").split("\n", 1)[-1] or "n/a (see matrix.log)")
try:
    s = json.loads(read("server.json"))
    c8 = s["runs"]["c8"]
    off = max(s["offline_images_per_s"].values())
    print(f"lse-serve, concurrency 8: {c8['requests_per_s']:.1f} req/s (p50 {c8['p50_ms']:.0f} ms, "
          f"p99 {c8['p99_ms']:.0f} ms, {c8['errors']} errors); offline {off:.1f} images/s; "
          f"ratio {c8['ratio_vs_offline']:.2f}")
except (ValueError, KeyError):
    print("lse-serve: n/a (see server.log)")
EOF
