#!/usr/bin/env python3
"""Reference figure for GPU inference: the FCN8s of trainer/tests/py/fcn8s_reference.py
in PyTorch eager (eval mode, inference_mode), one forward pass + softmax + arg-max per
batch of --size images, for each precision (fp32; fp16: the network and input cast to
float16, as a float16 export runs) and batch size. This is the number an ONNX Runtime
CUDA row of `lse bench` has to meet on the same GPU.

  scripts/bench_infer_torch.py [--width 1] [--size 2048x1024] [--precision fp32,fp16]
                               [--batch 1,8] [--runs 10] [--warmup 3] [--device cuda]

One line per row, then `RESULT <precision>_b<batch>_ms_per_image=<median> ...`.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "py"))
from fcn8s_reference import FCN8s  # noqa: E402


def row(net, dev, dtype, batch, h, w, runs, warmup):
    """Median ms per batch of one precision and batch size."""
    x = torch.randn(batch, 3, h, w, device=dev, dtype=dtype) * 64.0
    times = []
    with torch.inference_mode():
        for r in range(warmup + runs):
            t0 = time.perf_counter()
            labels = net(x).softmax(1).argmax(1)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if r >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    assert labels.shape == (batch, h, w)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--size", default="2048x1024")
    ap.add_argument("--precision", default="fp32,fp16")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    w, h = (int(v) for v in a.size.split("x"))
    dev = torch.device("cuda:0" if a.device == "cuda" else "cpu")
    fields = []
    for prec in a.precision.split(","):
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[prec]
        net = FCN8s(19, a.width).to(dev, dtype).eval()
        for batch in (int(b) for b in a.batch.split(",")):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms = row(net, dev, dtype, batch, h, w, a.runs, a.warmup)
            peak = f", peak allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if dev.type == "cuda" else ""
            print(f"PyTorch {a.device} {prec} batch {batch}, {w}x{h}, width {a.width}: "
                  f"{ms / batch:.2f} ms/image, {1e3 * batch / ms:.1f} images/s{peak}")
            fields.append(f"{prec}_b{batch}_ms_per_image={ms / batch:.3f}")
        del net
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
