"""Does a model adapted on LSE's windows do better on images that look like its windows?

A diagnostic of the benchmark's finished models (it trains nothing and chooses nothing):
each model is evaluated on three versions of the target's val split,

  val       the images as they are;
  windows   each image's 2x2 grid of scale-0.5 windows, upsampled 2x bilinearly with
            align_corners (as lse-train upsamples its windows), labels by pixel
            replication: the look and the object scale of LSE's training examples;
  smoothed  each image subsampled by 2 and upsampled back the same way, labels as they
            are: the windows' pixel statistics (noise grain, blur, block size doubled)
            at the full image's object scale.

If LSE loses to self-training because it adapted to the windows' look, its deficit
shrinks on `windows` and on `smoothed`; if it is the object scale, on `windows` only.

  window_domains.py make TARGET_DIR OUT_DIR
        OUT_DIR/target: a Cityscapes tree with splits val (a link), windows, smoothed
  window_domains.py run BIN SOURCE_CKPT RUNS_DIR OUT_DIR
        evaluates the source model and every finished arm of RUNS_DIR on the three splits
        (resumes: one JSON per model and split under OUT_DIR/evals), then the table into
        RUNS_DIR/window-domains.md, which the benchmark's results page includes
"""
import glob
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from bench_adapt import WINDOW_DOMAINS_MD, load, write_text

SPLITS = ("val", "windows", "smoothed")
ARMS = ("control", "self-training", "lse", "lse-chosen", "lse-nofocal")
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"


def upsample(img, h, w):
    """uint8 HxWx3 -> uint8 hxwx3, bilinear with align_corners (lse-train's window op)."""
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    up = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)
    return up[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def save(arr, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path + ".tmp.png")
    os.replace(path + ".tmp.png", path)


def pairs(target, split):
    """(image path, label path, city, key) of every image of the split."""
    for img in sorted(glob.glob(os.path.join(target, "leftImg8bit", split, "*", "*" + IMAGE_SUFFIX))):
        city = os.path.basename(os.path.dirname(img))
        key = os.path.basename(img)[: -len(IMAGE_SUFFIX)]
        lab = os.path.join(target, "gtFine", split, city, key + LABEL_SUFFIX)
        if not os.path.isfile(lab):
            raise SystemExit(f"no label {lab} for {img}")
        yield img, lab, city, key


def make(target, out):
    dst = os.path.join(out, "target")
    for sub in ("leftImg8bit", "gtFine"):
        link = os.path.join(dst, sub, "val")
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.abspath(os.path.join(target, sub, "val")), link)
    n = 0
    for img_path, lab_path, city, key in pairs(target, "val"):
        img = np.array(Image.open(img_path).convert("RGB"))
        lab = np.array(Image.open(lab_path))
        h, w = lab.shape
        city_, seq, frame = key.rsplit("_", 2)
        wh, ww = h // 2, w // 2
        for k, (y, x) in enumerate([(0, 0), (0, ww), (wh, 0), (wh, ww)]):
            # A new sequence number per window keeps Cityscapes' key pattern.
            wkey = f"{city_}_{int(seq) * 4 + k:06d}_{frame}"
            save(upsample(img[y:y + wh, x:x + ww], h, w),
                 os.path.join(dst, "leftImg8bit", "windows", city, wkey + IMAGE_SUFFIX))
            save(lab[y:y + wh, x:x + ww].repeat(2, axis=0).repeat(2, axis=1),
                 os.path.join(dst, "gtFine", "windows", city, wkey + LABEL_SUFFIX))
        save(upsample(img[::2, ::2], h, w), os.path.join(dst, "leftImg8bit", "smoothed", city, key + IMAGE_SUFFIX))
        save(lab, os.path.join(dst, "gtFine", "smoothed", city, key + LABEL_SUFFIX))
        n += 1
    print(f"wrote {4 * n} windows and {n} smoothed images of {n} val images to {dst}", file=sys.stderr)


def models(source, runs):
    """(arm, seed, checkpoint) of the source model and every finished arm run."""
    found = [("source-only", None, source)]
    for d in sorted(glob.glob(os.path.join(runs, "*-s[0-9]*"))):
        arm, seed = os.path.basename(d).rsplit("-s", 1)
        ckpt = os.path.join(d, "model.safetensors")
        if arm in ARMS and os.path.isfile(ckpt):
            found.append((arm, int(seed), ckpt))
    return found


def evaluate(binary, ckpt, target, split, path):
    if os.path.isfile(path):
        return load(path)["miou"] * 100
    cmd = [os.path.join(binary, "lse-train"), "eval", ckpt, "--target", f"cityscapes:{target}",
           "--split", split, "--json", "--device", "cpu", "--threads", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text(path, out)
    return json.loads(out)["miou"] * 100


def run(binary, source, runs, out):
    target = os.path.join(out, "target")
    scores = {}  # (arm, seed) -> {split: mIoU}
    for arm, seed, ckpt in models(source, runs):
        for split in SPLITS:
            name = f"{arm}-s{seed}" if seed is not None else arm
            v = evaluate(binary, ckpt, target, split, os.path.join(out, "evals", f"{name}-{split}.json"))
            scores.setdefault((arm, seed), {})[split] = v
            print(f"{name} {split}: {v:.2f}", file=sys.stderr)
    write_table(scores, runs, os.path.join(runs, WINDOW_DOMAINS_MD))


def write_table(scores, runs, results):
    L = ["| model | seeds | " + " | ".join(SPLITS) + " |", "|---|---|" + "---|" * len(SPLITS)]
    for arm in ("source-only",) + ARMS:
        rows = [v for (a, _), v in scores.items() if a == arm]
        if rows:
            L.append(f"| {arm} | {len(rows)} | "
                     + " | ".join(f"{statistics.fmean(r[s] for r in rows):.2f}" for s in SPLITS) + " |")
    L += ["", "Seed-paired differences (mean, and per seed):", ""]
    for a, b in (("lse-chosen", "self-training"), ("lse", "self-training"), ("lse-chosen", "control"),
                 ("self-training", "control")):
        seeds = sorted(s for (arm, s) in scores if arm == a and (b, s) in scores)
        if not seeds:
            continue
        cells = []
        for split in SPLITS:
            d = [scores[(a, s)][split] - scores[(b, s)][split] for s in seeds]
            cells.append(f"{statistics.fmean(d):+.2f} ({', '.join(f'{x:+.2f}' for x in d)})")
        L.append(f"- {a} - {b}: " + "; ".join(f"{s} {c}" for s, c in zip(SPLITS, cells)))
    L.append("")
    text = (f"Models of `{os.path.relpath(runs)}` on the three versions of val "
            "(`scripts/window_domains.py`; mIoU %, 19 classes).\n\n" + "\n".join(L))
    write_text(results, text)
    print(text)


def main():
    torch.set_num_threads(1)
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "make" and len(sys.argv) == 4:
        make(sys.argv[2], sys.argv[3])
    elif cmd == "run" and len(sys.argv) == 6:
        run(*sys.argv[2:6])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
