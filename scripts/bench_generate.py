#!/usr/bin/env python3
"""Times the generation of the scale-invariant examples of one image (LSE round,
step 3 of docs/method.md: normalised entropy and reliable mask from P and the class
thresholds, K random windows, crop + bilinear upsampling with aligned corners of
image, P and M, arg-max, ignore where the upsampled mask is 0) three ways:

  rust   lse_trainer::lse through trainer/examples/bench_generate.rs (--rust-exe
         runs it, or --rust-ms passes its median);
  torch  the same computation written with PyTorch tensor operations (eager);
  loop   the reference implementation's formulation: numpy entropy, per-class
         normalisation, the mask computed by a Python loop over every pixel, and
         crops upsampled window by window (numpy bilinear, aligned corners).
         The per-pixel loop is timed on a --loop-size image (default 256x128) and
         scaled linearly by the pixel count (it is O(pixels)); this is printed.

--device cuda runs the Rust example and the PyTorch version on the GPU (each timing
ends with a synchronisation) and skips the loop formulation, which is numpy's.

Same input size, class count, K, window scale and thread count for all. Prints the
median ms of each and the ratios rust/torch (target <= 1.2) and loop/rust (speed-up).
Last line: RESULT rust_ms=.. torch_ms=.. loop_ms=.. ratio_rust_torch=.. speedup_vs_loop=..
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = 255


def parse_size(s):
    w, h = s.split("x")
    return int(w), int(h)


# ---------------------------------------------------------------- PyTorch tensor ops
def normalized_entropy_torch(p):
    C = p.shape[0]
    h = -torch.xlogy(p, p).sum(0)
    a = p.max(0).indices  # as lse.rs: max's indices, faster than argmax on CPU
    hf, af = h.flatten(), a.flatten()
    mins = torch.full((C,), float("inf"), device=p.device).scatter_reduce(0, af, hf, "amin")
    maxs = torch.full((C,), float("-inf"), device=p.device).scatter_reduce(0, af, hf, "amax")
    lo = mins.gather(0, af)
    rng = maxs.gather(0, af) - lo
    pos = rng > 0
    hn = torch.where(pos, (hf - lo) / torch.where(pos, rng, torch.ones_like(rng)), torch.zeros_like(rng))
    return hn.view_as(h), a


def mask_torch(p, taus):
    hn, a = normalized_entropy_torch(p)
    tau = torch.tensor([t if t is not None else float("-inf") for t in taus], dtype=torch.float64,
                       device=p.device)
    return (hn.double() < tau.index_select(0, a.flatten()).view_as(hn)).float()


def generate_torch(image, p, m, windows):
    """The same algorithm as lse.rs's generate, op for op."""
    C, H, W = p.shape
    crops = torch.empty(len(windows), 3 + C + 1, windows[0][2], windows[0][3], device=p.device)
    for k, (y, x, h, w) in enumerate(windows):
        crops[k, :3].copy_(image[:, y:y + h, x:x + w])
        crops[k, 3:3 + C].copy_(p[:, y:y + h, x:x + w])
        crops[k, 3 + C].copy_(m[y:y + h, x:x + w])
    up = F.interpolate(crops, size=(H, W), mode="bilinear", align_corners=True)
    images = up[:, :3].contiguous()
    lab = up[:, 3:3 + C].max(1).indices
    ign = up[:, 3 + C] == 0
    lab = lab.masked_fill(ign, IGNORE)
    return images, lab, float(ign.double().mean())


def run_torch(image, p, taus, windows):
    m = mask_torch(p, taus)
    return generate_torch(image, p, m, windows)


# ---------------------------------------------------- reference: per-pixel loop, numpy
def normalized_entropy_np(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(0)
    a = p.argmax(0)
    hn = np.zeros_like(h)
    for k in range(p.shape[0]):
        sel = a == k
        if sel.any():
            lo, hi = h[sel].min(), h[sel].max()
            hn[sel] = 0.0 if hi == lo else (h[sel] - lo) / (hi - lo)
    return hn, a


def mask_loop(hn, a, taus):
    H, W = hn.shape
    m = np.zeros((H, W), dtype=np.float32)
    for y in range(H):
        for x in range(W):
            t = taus[a[y, x]]
            if t is not None and hn[y, x] < t:
                m[y, x] = 1.0
    return m


def bilinear_align_corners_np(x, H, W):
    # x: C x h x w -> C x H x W, align_corners=True
    c, h, w = x.shape
    ys = np.linspace(0, h - 1, H) if H > 1 else np.zeros(1)
    xs = np.linspace(0, w - 1, W) if W > 1 else np.zeros(1)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0).astype(np.float32)[:, None]
    wx = (xs - x0).astype(np.float32)[None, :]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bot = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bot * wy


def generate_np(image, p, m, windows):
    C, H, W = p.shape
    out = []
    for (y, x, h, w) in windows:
        ui = bilinear_align_corners_np(image[:, y:y + h, x:x + w], H, W)
        up = bilinear_align_corners_np(p[:, y:y + h, x:x + w], H, W)
        um = bilinear_align_corners_np(m[None, y:y + h, x:x + w], H, W)[0]
        lab = up.argmax(0)
        lab[um == 0] = IGNORE
        out.append((ui, lab))
    return out


def median_ms(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1024x512", help="W x H (default 1024x512)")
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--loop-size", default="256x128", help="image size for the per-pixel loop (scaled)")
    ap.add_argument("--loop-runs", type=int, default=3)
    ap.add_argument("--rust-ms", type=float, help="median of bench_generate (ms)")
    ap.add_argument("--rust-exe", help="path of the built bench_generate example to run")
    ap.add_argument("--skip-loop", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of rust and torch")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    W, H = parse_size(args.size)
    C, K = args.classes, args.k
    torch.manual_seed(0)
    p = (torch.randn(C, H, W) * 3.0).softmax(0)
    image = torch.randn(3, H, W) * 50.0
    boundary = (torch.randn(C, H, W) * 3.0).softmax(0)
    if args.device == "cuda":
        args.skip_loop = True
        p_cpu, p, image, boundary = p, p.cuda(), image.cuda(), boundary.cuda()
    else:
        p_cpu = p
    hn_b, a_b = normalized_entropy_torch(boundary)
    taus = [float(hn_b[a_b == c].double().mean()) if (a_b == c).any() else None for c in range(C)]
    wh, ww = max(1, round(H * args.scale)), max(1, round(W * args.scale))
    g = torch.Generator().manual_seed(0)

    def windows():
        return [
            (int(torch.randint(0, H - wh + 1, (1,), generator=g)), int(torch.randint(0, W - ww + 1, (1,), generator=g)), wh, ww)
            for _ in range(K)
        ]

    print(f"generate the K={K} scale-invariant examples of one {W}x{H} image, C={C}, scale {args.scale}, "
          f"{args.device}, {args.threads} thread(s), torch {torch.__version__}, numpy {np.__version__}")

    def run_rust():
        cmd = [args.rust_exe, "--size", args.size, "--classes", str(C), "--k", str(K), "--scale", str(args.scale),
               "--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup),
               "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        sys.stdout.write(out)
        return float(re.search(r"rust_generate_ms=([0-9.]+)", out).group(1))

    def synced(fn):
        def run():
            out = fn()
            if args.device == "cuda":
                torch.cuda.synchronize()
            return out
        return run

    def run_torch_median():
        t = median_ms(synced(lambda: run_torch(image, p, taus, windows())), args.runs, args.warmup)
        tm = median_ms(synced(lambda: mask_torch(p, taus)), args.runs, args.warmup)
        print(f"torch (eager tensor ops): {t:.1f} ms (mask {tm:.1f} ms)")
        return t

    # Rust and torch alternate --rounds times, so that a load change on a shared
    # machine hits both; the ratio is the median of the per-round ratios.
    rust_ms, ratios, torch_all = args.rust_ms, [], []
    for _ in range(args.rounds):
        r = run_rust() if args.rust_exe else None
        t = run_torch_median()
        torch_all.append(t)
        if r is not None:
            ratios.append(r / t)
    t_torch = statistics.median(torch_all)
    if args.rust_exe:
        rust_ms = statistics.median([rt * tt for rt, tt in zip(ratios, torch_all)])

    t_loop = None
    if not args.skip_loop:
        pn, imn = p_cpu.numpy(), image.numpy()
        t_ent = median_ms(lambda: normalized_entropy_np(pn), args.loop_runs, 0)
        lw, lh = parse_size(args.loop_size)
        ps = (torch.randn(C, lh, lw) * 3.0).softmax(0).numpy()
        hn_s, a_s = normalized_entropy_np(ps)
        t_small = median_ms(lambda: mask_loop(hn_s, a_s, taus), args.loop_runs, 0)
        t_maskloop = t_small * (H * W) / (lh * lw)
        hn, a = normalized_entropy_np(pn)
        m = mask_loop(hn, a, taus) if H * W <= lh * lw else (hn < np.array(
            [t if t is not None else -np.inf for t in taus])[a]).astype(np.float32)
        t_gen = median_ms(lambda: generate_np(imn, pn, m, windows()), args.loop_runs, 0)
        t_loop = t_ent + t_maskloop + t_gen
        print(f"reference loop formulation (numpy): {t_loop:.0f} ms = entropy+normalisation {t_ent:.0f} ms "
              f"+ per-pixel mask loop {t_maskloop:.0f} ms (measured {t_small:.0f} ms at {lw}x{lh}, scaled x"
              f"{(H * W) / (lh * lw):.1f}) + crops/upsampling/labels {t_gen:.0f} ms")

    fields = [f"torch_ms={t_torch:.3f}"]
    if rust_ms is not None:
        fields.insert(0, f"rust_ms={rust_ms:.3f}")
        ratio = statistics.median(ratios) if ratios else rust_ms / t_torch
        print(f"rust {rust_ms:.1f} ms / torch {t_torch:.1f} ms: ratio {ratio:.3f} (target <= 1.2; "
              f"per-round ratios {', '.join(f'{x:.3f}' for x in ratios) or 'n/a'})")
        fields.append(f"ratio_rust_torch={ratio:.3f}")
    if t_loop is not None:
        fields.append(f"loop_ms={t_loop:.3f}")
        print(f"torch speed-up over the loop formulation: {t_loop / t_torch:.1f}x")
        if rust_ms is not None:
            print(f"rust speed-up over the loop formulation: {t_loop / rust_ms:.1f}x")
            fields.append(f"speedup_vs_loop={t_loop / rust_ms:.2f}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
