"""Independent post-processing with PyTorch, for the tests of `lse_runtime::predict`.

usage: upsample_ref.py SCORES C H W OUT_W OUT_H OUT_PREFIX
SCORES: C x H x W float32 logits, raw little-endian. Computes the reference
evaluation's post-processing: softmax over classes, then
F.interpolate(..., mode="bilinear", align_corners=True) to OUT_H x OUT_W, then arg-max
(first maximum on ties). Writes OUT_PREFIX.ids (uint8, OUT_H x OUT_W) and
OUT_PREFIX.margin (float32: top-1 minus top-2 upsampled probability of each pixel).
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F


def main():
    path, c, h, w, ow, oh, prefix = sys.argv[1:]
    c, h, w, ow, oh = int(c), int(h), int(w), int(ow), int(oh)
    torch.set_num_threads(1)
    s = torch.from_numpy(np.fromfile(path, dtype="<f4").reshape(1, c, h, w).copy())
    p = torch.softmax(s, dim=1)
    up = F.interpolate(p, size=(oh, ow), mode="bilinear", align_corners=True)[0]
    ids = up.argmax(0).to(torch.uint8).numpy()
    if c > 1:
        top = up.topk(2, dim=0).values
        margin = (top[0] - top[1]).numpy()
    else:
        margin = np.ones((oh, ow), dtype=np.float32)
    ids.astype(np.uint8).tofile(prefix + ".ids")
    margin.astype("<f4").tofile(prefix + ".margin")


if __name__ == "__main__":
    main()
