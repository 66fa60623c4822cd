#!/usr/bin/env bash
# Idempotent set-up of the native libraries this project links and loads:
#   - PyTorch 2.11.0 (its libtorch is what the `tch` crate links against),
#   - ONNX Runtime 1.31.1 (loaded at run time by the `ort` crate),
#   - onnx, numpy, pillow (independent checks in the test suite and benchmarks),
#   - tritonclient[http,grpc] (the official Open Inference Protocol clients that the
#     server's v2 and gRPC tests drive; it pins protobuf below 7, which onnx accepts).
# Everything goes into .venv at the repository root. A second run takes seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

TORCH_VERSION="2.11.0"
ORT_VERSION="1.31.1"
ONNX_VERSION="1.20.0"
NUMPY_VERSION="2.3.5"
PILLOW_VERSION="12.0.0"
SAFETENSORS_VERSION="0.7.0"
TRITONCLIENT_VERSION="2.73.0"
# GPU only (LSE_GPU=1): TensorRT 10's libraries for ONNX Runtime's TensorRT provider
# (libnvinfer.so.10 in site-packages/tensorrt_libs; scripts/gpu-run.sh puts that folder
# on the library path). PyPI's package is a small source stub that downloads the real
# wheel from NVIDIA's own package index while installing, so it is installed in
# a second pip step of its own whose failure is a warning, not a failed set-up.
TENSORRT_VERSION="10.16.1.11"

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || die "python3 not found. Install it, e.g.: apt-get install -y python3 python3-venv python3-pip"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || die "python3 has no venv/ensurepip module. Install it, e.g.: apt-get install -y python3-venv python3-pip"

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
VPY="$root/.venv/bin/python"
pyver="$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

want_gpu="${LSE_GPU:-}"
if [ -z "$want_gpu" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then want_gpu=1; else want_gpu=0; fi
fi
ort_pkg="onnxruntime"
[ "$want_gpu" = "1" ] && ort_pkg="onnxruntime-gpu"

have() { # have PKG VERSION: is exactly this version installed?
  "$VPY" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"
}

need=()
have torch "$TORCH_VERSION" || need+=("torch==$TORCH_VERSION")
have "$ort_pkg" "$ORT_VERSION" || need+=("$ort_pkg==$ORT_VERSION")
have onnx "$ONNX_VERSION" || need+=("onnx==$ONNX_VERSION")
have numpy "$NUMPY_VERSION" || need+=("numpy==$NUMPY_VERSION")
have pillow "$PILLOW_VERSION" || need+=("pillow==$PILLOW_VERSION")
have safetensors "$SAFETENSORS_VERSION" || need+=("safetensors==$SAFETENSORS_VERSION")
have tritonclient "$TRITONCLIENT_VERSION" || need+=("tritonclient[http,grpc]==$TRITONCLIENT_VERSION")

# free_gib DIR: whole GiB free on DIR's file system.
free_gib() { df -Pk "$1" | awk 'NR == 2 { print int($4 / 1048576) }'; }

# torch with its CUDA libraries takes about 5 GiB in .venv, and pip holds the
# downloaded wheels (about 3.5 GiB) in its temporary folder until it is done. Say so
# plainly instead of letting pip fail half-way with a traceback.
check_disk() {
  local tmp="${TMPDIR:-/tmp}" need_gib="${LSE_SETUP_MIN_FREE_GIB:-9}"
  local venv_free tmp_free
  venv_free="$(free_gib "$root")"
  tmp_free="$(free_gib "$tmp")"
  if [ "$(df -Pk "$root" | awk 'NR == 2 { print $1 }')" = "$(df -Pk "$tmp" | awk 'NR == 2 { print $1 }')" ]; then
    [ "$venv_free" -ge "$need_gib" ] ||
      die "only $venv_free GiB free on the disk that holds $root and $tmp; installing torch needs about $need_gib GiB (free some space, or point TMPDIR at a larger disk)"
  else
    [ "$venv_free" -ge 5 ] || die "only $venv_free GiB free for $root/.venv; torch needs about 5 GiB there"
    [ "$tmp_free" -ge 4 ] || die "only $tmp_free GiB free in $tmp (pip's download folder); set TMPDIR to a disk with 4 GiB free"
  fi
}

if [ "${#need[@]}" -gt 0 ]; then
  [[ " ${need[*]}" == *" torch=="* ]] && check_disk
  say "installing into .venv: ${need[*]} (torch is about 2.7 GB the first time)"
  # The CPU and GPU flavours of onnxruntime ship the same module; never keep both.
  if [ "$ort_pkg" = "onnxruntime-gpu" ]; then "$VPY" -m pip uninstall -y -q onnxruntime >/dev/null 2>&1 || true
  else "$VPY" -m pip uninstall -y -q onnxruntime-gpu >/dev/null 2>&1 || true; fi
  # --no-cache-dir: no second copy of the wheels in ~/.cache/pip.
  "$VPY" -m pip install --disable-pip-version-check --no-cache-dir -q "${need[@]}"
fi

# TensorRT's libraries: a second step, after everything else is in place.
trt_note=""
if [ "$want_gpu" = "1" ] && ! have tensorrt-cu13-libs "$TENSORRT_VERSION"; then
  say "installing into .venv: tensorrt-cu13-libs==$TENSORRT_VERSION (TensorRT's libraries, from NVIDIA's index)"
  if ! "$VPY" -m pip install --disable-pip-version-check --no-cache-dir -q "tensorrt-cu13-libs==$TENSORRT_VERSION"; then
    trt_note="warning: TensorRT's libraries come from NVIDIA's own package index, which this machine cannot reach (or the install failed; see pip's message above); the CUDA provider still works, the TensorRT provider will report libnvinfer missing"
    say "$trt_note"
  fi
fi

# torch-sys does not check the libtorch version of a pip wheel: do it here.
got="$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')"
[ "$got" = "$TORCH_VERSION" ] || die "torch $got found in .venv, tch 0.24 needs exactly $TORCH_VERSION"

site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
libtorch="$site/torch"
ortlib="$(ls "$site"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1 || true)"
[ -f "$libtorch/lib/libtorch_cpu.so" ] || die "libtorch not found under $libtorch"
[ -n "$ortlib" ] || die "libonnxruntime.so.* not found under $site/onnxruntime/capi"

# Stable in-repo paths that .cargo/config.toml and the binaries use.
ln -sfn "$libtorch" .venv/libtorch
ln -sfn "$ortlib" .venv/libonnxruntime.so

say "python $pyver, torch $got, $ort_pkg $ORT_VERSION"
say "LIBTORCH       -> $libtorch (linked as .venv/libtorch)"
say "ONNX Runtime   -> $ortlib (linked as .venv/libonnxruntime.so)"
[ -z "$trt_note" ] || say "$trt_note"
