#!/usr/bin/env python3
"""One training iteration of LSE adaptation in PyTorch eager, for comparison with
trainer/examples/bench_train.rs: forward + backward of a source batch (cross-entropy,
ignore 255), forward + backward of a target batch (cross-entropy + focal term,
beta 0.1, gamma 3), one torch.optim.Adam step over two groups (weights, biases; the
bilinear upsampling kernels frozen). Same FCN8s (trainer/tests/py/fcn8s_reference.py),
width, input size, batch and thread count.

--amp bf16|fp16: the forward passes under torch.autocast in that type (the losses on
float32 logits, fp16 with torch.amp.GradScaler), as lse-train's `amp` setting. On CUDA
the peak memory PyTorch's allocator reserved is printed too.

Last line: RESULT torch_iter_ms=<median>
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "py"))
from fcn8s_reference import FCN8s  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--size", default="256x128")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    w, h = (int(v) for v in a.size.split("x"))
    dev = torch.device(a.device if a.device == "cpu" else "cuda:0")
    net = FCN8s(19, a.width).to(dev).train()
    weights, biases = [], []
    for name, p in net.named_parameters():
        if name.startswith("upscore"):
            p.requires_grad_(False)
        elif name.endswith(".weight"):
            weights.append(p)
        else:
            biases.append(p)
    opt = torch.optim.Adam([{"params": weights, "lr": 1e-4}, {"params": biases, "lr": 2e-4}],
                           betas=(0.9, 0.99))

    def mk():
        return (torch.randn(a.batch, 3, h, w, device=dev) * 64.0,
                torch.randint(0, 19, (a.batch, h, w), device=dev))

    (xs, ys), (xt, yt) = mk(), mk()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
    scaler = torch.amp.GradScaler(dev.type, init_scale=65536.0) if a.amp == "fp16" else None

    def forward(x):
        if dtype is None:
            return net(x)
        with torch.autocast(dev.type, dtype=dtype):
            return net(x).float()

    def backward(loss):
        (scaler.scale(loss) if scaler else loss).backward()

    def target_loss(logits, labels):
        l = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
        valid = (labels != 255).sum().clamp_min(1)
        focal = l * (1 - torch.exp(-l)).clamp_min(1e-30) ** 3.0
        return l.sum() / valid + 0.1 * focal.sum() / valid

    times = []
    for r in range(a.warmup + a.runs):
        t0 = time.perf_counter()
        opt.zero_grad()
        ls = F.cross_entropy(forward(xs), ys, ignore_index=255)
        backward(ls)
        lt = target_loss(forward(xt), yt)
        backward(lt)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        _ = ls.item() + lt.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if r >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(f"PyTorch eager iteration: width {a.width}, {w}x{h}, batch {a.batch}, "
          f"{a.threads} threads, {a.device}, amp {a.amp}: median {med:.1f} ms over {a.runs} runs")
    if dev.type == "cuda":
        print(f"PyTorch peak reserved {torch.cuda.max_memory_reserved() / 2**20:.0f} MiB, "
              f"allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"RESULT torch_iter_ms={med:.3f}")


if __name__ == "__main__":
    main()
