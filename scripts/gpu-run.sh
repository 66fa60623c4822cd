#!/usr/bin/env bash
# The GPU check, run from the bundle that scripts/gpu-bundle.sh packs (.gpu/) on a
# machine with an NVIDIA GPU and python3 with PyTorch (CUDA) — nothing else: no Rust,
# no network, no project set-up. Each step has its own timeout and the whole run stays
# within LSE_GPU_RUN_BUDGET_S (default 330 s); a step that would not fit is skipped.
#
#   probe          GPU, driver, torch (version, git version, CUDA), ONNX Runtime and
#                  its providers, `ldd` of every binary ("not found" is a failure)
#   prepare        tiny synthetic set (lse synth) and a tiny network (lse-train init)
#   smoke*         lse-train train, adapt (2 rounds, killed after a checkpoint,
#                  resumed) and train with amp bf16 and fp16, all on CUDA
#   eval*          lse-train eval of the smoke's model on CUDA and on the CPU: mIoU
#                  within 0.05 points (0.0005 as the fraction the JSON holds)
#   train-bench*   one training iteration, full width, 1024x512, batch 1: lse-train
#                  (bench_train) vs PyTorch eager (bench_train.py), fp32 and bf16, in
#                  the orders A/B and B/A, with each process's peak GPU memory
#   torch-infer*   PyTorch inference reference: FCN8s, fp32/fp16, batch 1 and 8,
#                  2048x1024 (the figure ONNX Runtime's CUDA path has to meet)
#   generate-bench* example generation on CUDA: lse-train's vs PyTorch tensor ops
#   export         a full-width network exported to ONNX (for the next step)
#   lse-bench-cpu  the CPU rows of `lse bench` (ONNX Runtime, CPU provider)
#   ort-gpu*       where that Python's ONNX Runtime has the CUDA provider (a machine set
#                  up with LSE_GPU=1 scripts/setup.sh, LSE_GPU_PYTHON=.venv/bin/python):
#                  the `lse bench` matrix cuda,tensorrt x fp32,fp16 x batch 1,8; else
#                  skipped (the lent machine's onnxruntime is CPU-only)
#   (* needs a GPU)
#
# Results: gpu-results.json, gpu-results.md and gpu-run.log (every step's output) in
# $OUT when set, else target/gpu-results/ — three files.
#
#   bash .gpu/scripts/gpu-run.sh            (from the bundle)
#   env: LSE_GPU_RUN_DRY=1      run the steps that need no GPU (on a CPU machine) and
#                               report the others as skipped
#        LSE_GPU_RUN_REHEARSE=1 run every step, the GPU steps on the CPU (a check of
#                               the commands before a GPU call; no GPU figure)
#        LSE_GPU_PYTHON         the Python with PyTorch (default python3, else .venv's)
#        LSE_GPU_BUNDLE         the bundle (default: the folder this script is in, ..)
#        LSE_GPU_RUN_BUDGET_S   whole-run budget in seconds (default 330)
#        LSE_GPU_RUN_BENCH_WIDTH, LSE_GPU_RUN_BENCH_SIZE, LSE_GPU_RUN_TRAIN_SIZE
#                               network width (1) and image sizes (2048x1024,
#                               1024x512) of the benchmarks (smaller for tests)
#        LSE_GPU_RUN_THREADS    CPU threads (default: all cores)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUNDLE="${LSE_GPU_BUNDLE:-$(cd "$here/.." && pwd)}"
BIN="$BUNDLE/bin"
DRY="${LSE_GPU_RUN_DRY:-}"
REHEARSE="${LSE_GPU_RUN_REHEARSE:-}"
DEV=cuda
[ -n "$REHEARSE" ] && DEV=cpu
BUDGET="${LSE_GPU_RUN_BUDGET_S:-330}"
WIDTH="${LSE_GPU_RUN_BENCH_WIDTH:-1}"
BENCH_SIZE="${LSE_GPU_RUN_BENCH_SIZE:-2048x1024}"
TRAIN_SIZE="${LSE_GPU_RUN_TRAIN_SIZE:-1024x512}"
THREADS="${LSE_GPU_RUN_THREADS:-$(nproc)}"
RESULTS="${OUT:-$BUNDLE/../target/gpu-results}"

# ---------------------------------------------------------------- the steps
# Each runs in its own process (under `timeout`), writes its output to the log and
# its figures as `RESULT key=value ...` lines; a non-zero status fails the step.

step_prepare() {
  rm -rf "$WORK/data" "$WORK/init.safetensors"
  "$BIN/lse" synth --out "$WORK/data" --train 20 --val 4 --size 96x48 --seed 1 &&
    "$BIN/lse-train" init --width 0.125 --classes 19 --seed 0 --out "$WORK/init.safetensors" &&
    echo "RESULT images=$(find "$WORK/data" -name '*.png' | wc -l)"
}

# lse-train on the tiny set with the test suite's settings; extra arguments appended.
tiny() {
  local cmd="$1"
  shift
  "$BIN/lse-train" "$cmd" --source "gta5:$WORK/data/source" --target "cityscapes:$WORK/data/target" \
    --set source_size=96x48 --set target_size=96x48 --set log_every=1 --lr 1e-4 --batch-size 2 \
    --device "$DEV" --threads 4 --quiet "$@"
}

step_smoke() {
  local d="$WORK/smoke"
  rm -rf "$d"
  mkdir -p "$d"
  tiny train --init "$WORK/init.safetensors" --iterations 6 --set checkpoint_every=4 --out "$d/src" || return 1
  local adapt=(--init "$d/src/model.safetensors" --p-schedule 1.0,1.0 --patches 2
    --set max_round_iterations=3 --set checkpoint_every=2 --out "$d/adapt")
  tiny adapt "${adapt[@]}" --stop-after-iterations 5
  local rc=$?
  [ "$rc" = 75 ] || { echo "adapt --stop-after-iterations 5 exited $rc (75 expected)"; return 1; }
  [ -f "$d/adapt/checkpoints/last.safetensors" ] || { echo "no checkpoint before the stop"; return 1; }
  "$BIN/lse-train" adapt --resume "$d/adapt" --device "$DEV" --threads 4 --quiet || return 1
  grep -q '"status": *"finished"' "$d/adapt/run.json" || { echo "resumed run not finished"; return 1; }
  tiny train --init "$WORK/init.safetensors" --iterations 6 --set amp=bf16 --out "$d/bf16" || return 1
  if [ "$DEV" = cuda ]; then
    tiny train --init "$WORK/init.safetensors" --iterations 6 --set amp=fp16 --out "$d/fp16" || return 1
    echo "RESULT amp_fp16=ok"
  fi
  echo "RESULT train=ok adapt_stop_resume=ok amp_bf16=ok"
}

step_eval() {
  local m="$WORK/smoke/adapt/model.safetensors" dev
  for dev in "$DEV" cpu; do
    "$BIN/lse-train" eval "$m" --target "cityscapes:$WORK/data/target" --split val --device "$dev" \
      --threads 4 --json >"$WORK/eval-$dev.json" || return 1
  done
  "$PY" - "$WORK/eval-$DEV.json" "$WORK/eval-cpu.json" "$DEV" <<'EOF'
import json, sys
cuda, cpu = (json.load(open(p))["miou"] for p in sys.argv[1:3])
d = abs(cuda - cpu) * 100  # mIoU points
print(f"mIoU on {sys.argv[3]} {cuda * 100:.3f}, on the CPU {cpu * 100:.3f}: difference {d:.3f} points (at most 0.05)")
print(f"RESULT miou_cuda={cuda:.5f} miou_cpu={cpu:.5f} miou_diff_points={d:.3f}")
sys.exit(0 if d <= 0.05 else 1)
EOF
}

# Peak device memory (MiB above the idle reading) of one command, sampled every 100 ms.
with_peak() {
  local name="$1" base sampler
  shift
  if [ "$DEV" != cuda ]; then
    "$@"
    return
  fi
  base="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$WORK/mem-$name.txt" 2>/dev/null &
  sampler=$!
  "$@"
  local rc=$?
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  echo "RESULT ${name}_peak_mib=$(sort -n "$WORK/mem-$name.txt" | tail -n1 | awk -v b="$base" '{ print $1 - b }')"
  return "$rc"
}

step_train_bench() {
  local common=(--width "$WIDTH" --size "$TRAIN_SIZE" --batch 1 --threads "$THREADS" --runs 10 --warmup 3 --device "$DEV")
  local amp order impl out
  for amp in off bf16; do
    for order in ab ba; do
      for impl in $([ "$order" = ab ] && echo "rust torch" || echo "torch rust"); do
        case "$impl" in
          rust) out="$(with_peak "rust_${amp}_$order" "$BIN/bench_train" "${common[@]}" --amp "$amp")" || return 1;;
          torch) out="$(with_peak "torch_${amp}_$order" "$PY" "$BUNDLE/scripts/bench_train.py" "${common[@]}" --amp "$amp")" || return 1;;
        esac
        echo "$out" | grep -v '^RESULT'
        echo "$out" | sed -n "s/^RESULT \(rust\|torch\)_iter_ms=/RESULT ${impl}_${amp}_${order}_ms=/p"
        echo "$out" | grep '^RESULT .*_peak_mib='
      done
    done
  done
}

step_torch_infer() {
  "$PY" "$BUNDLE/scripts/bench_infer_torch.py" --width "$WIDTH" --size "$BENCH_SIZE" \
    --precision fp32,fp16 --batch 1,8 --runs 10 --warmup 3 --device "$DEV"
}

step_generate_bench() {
  "$PY" "$BUNDLE/scripts/bench_generate.py" --rust-exe "$BIN/bench_generate" --size "$TRAIN_SIZE" \
    --device "$DEV" --threads "$THREADS" --runs 7 --warmup 2 --rounds 3
}

step_export() {
  rm -f "$WORK/bench.safetensors" "$WORK/bench.onnx"
  "$BIN/lse-train" init --width "$WIDTH" --classes 19 --seed 0 --out "$WORK/bench.safetensors" &&
    "$BIN/lse-train" export "$WORK/bench.safetensors" --out "$WORK/bench.onnx" --train-size "$TRAIN_SIZE" &&
    echo "RESULT onnx_mib=$(($(stat -c %s "$WORK/bench.onnx") / 1048576))"
}

step_ort_gpu() {
  "$BIN/lse-train" export "$WORK/bench.safetensors" --out "$WORK/bench-fp16.onnx" --train-size "$TRAIN_SIZE" \
    --precision fp16 || return 1
  "$BIN/lse" bench "$WORK/bench.onnx" --matrix cuda,tensorrt --precision fp32,fp16 --batch 1,8 --iters 10 \
    --size "$BENCH_SIZE" --threads "$THREADS" --trt-cache "$WORK/trt-cache" --fp16-model "$WORK/bench-fp16.onnx"
}

step_lse_bench_cpu() {
  "$BIN/lse" bench "$WORK/bench.onnx" --provider cpu --precision fp32 --batch 1 --size "$BENCH_SIZE" \
    --iters 3 --threads "$THREADS" --json >"$WORK/lse-bench.json" || return 1
  cat "$WORK/lse-bench.json"
  "$PY" - "$WORK/lse-bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"RESULT cpu_fp32_b1_ms_per_image={r['ms_per_image']:.2f} cpu_fp32_b1_images_per_s={r['images_per_s']:.3f} "
      f"first_run_s={r['first_run_s']:.2f} peak_host_mib={r['peak_host_mib']:.0f}")
EOF
}

# ---------------------------------------------------------------- the driver
if [ "${1:-}" = --step ]; then
  "step_${2//-/_}"
  exit $?
fi

START=$SECONDS
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
LOG="$RESULTS/gpu-run.log"
: >"$LOG"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lse-gpu-run.XXXXXX")"
STEPS="$WORK/steps.jsonl"
: >"$STEPS"
say() { printf '[gpu-run] %s\n' "$*" | tee -a "$LOG" >&2; }

# The Python with PyTorch: python3 on the lent machine, the project's .venv here.
PY="${LSE_GPU_PYTHON:-python3}"
if ! "$PY" -c 'import torch' 2>/dev/null && [ -z "${LSE_GPU_PYTHON:-}" ] && [ -x "$BUNDLE/../.venv/bin/python" ]; then
  PY="$BUNDLE/../.venv/bin/python"
fi

# Where that Python's torch, NVIDIA and ONNX Runtime libraries are.
libs="$(timeout 60 "$PY" - <<'EOF' 2>>"$LOG"
import glob, importlib.util, os
import torch
print("TORCH_LIB=" + os.path.join(os.path.dirname(torch.__file__), "lib"))
site = os.path.dirname(os.path.dirname(torch.__file__))
nvidia = glob.glob(os.path.join(site, "nvidia", "*", "lib")) + glob.glob(os.path.join(site, "tensorrt_libs"))
print("NVIDIA_LIBS=" + ":".join(sorted(nvidia)))
spec = importlib.util.find_spec("onnxruntime")
if spec:
    capi = os.path.join(os.path.dirname(spec.origin), "capi")
    found = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))
    print("ORT_LIB=" + (found[0] if found else ""))
EOF
)"
TORCH_LIB="$(sed -n 's/^TORCH_LIB=//p' <<<"$libs")"
NVIDIA_LIBS="$(sed -n 's/^NVIDIA_LIBS=//p' <<<"$libs")"
ORT_LIB="$(sed -n 's/^ORT_LIB=//p' <<<"$libs")"
if [ -z "$TORCH_LIB" ]; then
  say "cannot run: $PY has no PyTorch (set LSE_GPU_PYTHON)"
  exit 2
fi
export LD_LIBRARY_PATH="$TORCH_LIB${NVIDIA_LIBS:+:$NVIDIA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -n "$ORT_LIB" ] && export ORT_DYLIB_PATH="$ORT_LIB"
export PY WORK BIN BUNDLE DEV WIDTH BENCH_SIZE TRAIN_SIZE THREADS RUST_LOG=warn PYTHONUNBUFFERED=1

GPU=0
if [ -z "$DRY" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 &&
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  GPU=1
fi
[ -n "$REHEARSE" ] && GPU=1
if [ "$GPU" = 0 ] && [ -z "$DRY" ]; then
  say "cannot run: no usable NVIDIA GPU here (nvidia-smi or torch.cuda.is_available() says so); LSE_GPU_RUN_DRY=1 runs the steps that need none"
  exit 2
fi

# record NAME NEEDS_GPU STATUS SECONDS NOTE LOGFILE: one line of steps.jsonl.
record() {
  "$PY" - "$@" >>"$STEPS" <<'EOF'
import json, re, sys
name, gpu, status, secs, note, log = sys.argv[1:7]
results = {}
try:
    for line in open(log, errors="replace"):
        if line.startswith("RESULT "):
            for kv in line.split()[1:]:
                k, _, v = kv.partition("=")
                try:
                    results[k] = float(v)
                except ValueError:
                    results[k] = v
except OSError:
    pass
print(json.dumps({"step": name, "needs_gpu": gpu == "1", "status": status, "seconds": float(secs),
                  "note": note, "results": results}))
EOF
}

# run NAME NEEDS_GPU TIMEOUT_S: one step under its timeout and what is left of the budget.
run() {
  local name="$1" gpu="$2" limit="$3" left status note="" t0 rc
  left=$((BUDGET - (SECONDS - START) - 15))
  if [ "$gpu" = 1 ] && [ "$GPU" = 0 ]; then
    status=skipped note="needs a GPU (dry run)"
  elif [ "$left" -lt 10 ]; then
    status=skipped note="no time left in the ${BUDGET} s budget"
  fi
  if [ -n "${status:-}" ]; then
    say "$name: $status ($note)"
    record "$name" "$gpu" "$status" 0 "$note" /dev/null
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$name: running (timeout ${limit} s)"
  printf '\n===== %s =====\n' "$name" >>"$LOG"
  t0=$SECONDS
  timeout -k 5 "$limit" bash "${BASH_SOURCE[0]}" --step "$name" >"$WORK/$name.log" 2>&1
  rc=$?
  cat "$WORK/$name.log" >>"$LOG"
  case "$rc" in
    0) status=ok;;
    124 | 137) status=timeout note="stopped after ${limit} s";;
    *) status=failed note="exit status $rc (see gpu-run.log)";;
  esac
  say "$name: $status in $((SECONDS - t0)) s${note:+ ($note)}"
  record "$name" "$gpu" "$status" "$((SECONDS - t0))" "$note" "$WORK/$name.log"
}

probe() {
  {
    echo "RESULT machine=$(uname -m) dry=$([ -n "$DRY" ] && echo 1 || echo 0) rehearsal=$([ -n "$REHEARSE" ] && echo 1 || echo 0) device=$DEV"
    echo "RESULT width=$WIDTH train_size=$TRAIN_SIZE bench_size=$BENCH_SIZE threads=$THREADS"
    if command -v nvidia-smi >/dev/null 2>&1; then
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader -i 0 |
        sed 's/, /,/g; s/ /_/g; s/^\([^,]*\),\([^,]*\),\(.*\)$/RESULT gpu=\1 driver=\2 gpu_memory=\3/'
    else
      echo "RESULT gpu=none"
    fi
    timeout 60 "$PY" - <<'EOF'
import torch
print(f"RESULT torch={torch.__version__} torch_git={torch.version.git_version[:12]} "
      f"torch_cuda={torch.version.cuda} cuda_available={int(torch.cuda.is_available())}")
try:
    import onnxruntime as ort
    print(f"RESULT ort={ort.__version__} ort_providers={','.join(ort.get_available_providers())}")
except ImportError:
    print("RESULT ort=none")
EOF
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-(none)}"
    cat "$BUNDLE/BUILD" 2>/dev/null
    local missing=0 b
    for b in "$BIN"/*; do
      echo "--- ldd $(basename "$b")"
      ldd "$b" | tee "$WORK/ldd.txt"
      missing=$((missing + $(grep -c 'not found' "$WORK/ldd.txt")))
    done
    echo "RESULT ldd_not_found=$missing"
    [ "$missing" = 0 ]
  } >"$WORK/probe.log" 2>&1
  local rc=$?
  cat "$WORK/probe.log" >>"$LOG"
  local status=ok note=""
  [ "$rc" = 0 ] || status=failed note="a library is not found (see ldd in gpu-run.log)"
  say "probe: $status"
  record probe 0 "$status" "$((SECONDS - START))" "$note" "$WORK/probe.log"
}

report() {
  "$PY" "$BUNDLE/scripts/gpu_results.py" "$STEPS" "$RESULTS" || say "writing the results failed"
}

say "bundle $BUNDLE, results in $RESULTS, budget ${BUDGET} s$([ -n "$DRY" ] && echo ', DRY RUN (no GPU steps)')$([ -n "$REHEARSE" ] && echo ', REHEARSAL (GPU steps on the CPU)')"
probe
report
# Most important first: the budget skips what comes last.
run prepare 0 60
report
run smoke 1 120
run eval 1 45
report
run train-bench 1 160
report
run torch-infer 1 90
run generate-bench 1 60
report
run export 0 90
run lse-bench-cpu 0 60
if "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
  run ort-gpu 1 150
else
  say "ort-gpu: skipped (this ONNX Runtime has no CUDA provider)"
  record ort-gpu 1 skipped 0 "needs onnxruntime-gpu (this ONNX Runtime has no CUDA provider)" /dev/null
fi
report
failed="$(grep -c '"status": "\(failed\|timeout\)"' "$STEPS")"
say "done in $((SECONDS - START)) s: $(grep -c '"status": "ok"' "$STEPS") ok, $(grep -c '"status": "skipped"' "$STEPS") skipped, $failed failed or timed out"
rm -rf "$WORK"
[ "$failed" = 0 ]
