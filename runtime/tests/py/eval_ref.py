"""Independent Cityscapes-protocol evaluation with numpy, for the tests of `lse eval`.

usage: eval_ref.py GT_DIR PRED_DIR   -> JSON {"19"|"16"|"13": {"iou": [...], "miou": m}, "acc": a}
GT files are *_gtFine_labelIds.png; each prediction is found by the <city>_<seq>_<frame> key.
"""
import glob
import json
import os
import sys

import numpy as np
from PIL import Image

# label id -> train id, from cityscapesscripts/helpers/labels.py
ID2TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
            24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LUT = np.full(256, 255, dtype=np.int64)
for k, v in ID2TRAIN.items():
    LUT[k] = v

gt_dir, pred_dir = sys.argv[1], sys.argv[2]
conf = np.zeros((19, 20), dtype=np.int64)  # last column: prediction not a train class
for g in sorted(glob.glob(os.path.join(gt_dir, "**", "*_gtFine_labelIds.png"), recursive=True)):
    key = "_".join(os.path.basename(g).split("_")[:3])
    (p,) = glob.glob(os.path.join(pred_dir, "**", "*" + key + "*.png"), recursive=True)
    gt = LUT[np.array(Image.open(g))].ravel()
    pr = LUT[np.array(Image.open(p))].ravel()
    pr[pr == 255] = 19
    keep = gt != 255
    np.add.at(conf, (gt[keep], pr[keep]), 1)

tp = np.diag(conf[:, :19]).astype(float)
fp = conf[:, :19].sum(0) - tp
fn = conf.sum(1) - tp
den = tp + fp + fn
iou = np.where(den > 0, tp / np.maximum(den, 1), np.nan)
subsets = {"19": list(range(19)),
           "16": [c for c in range(19) if c not in (9, 14, 16)],
           "13": [c for c in range(19) if c not in (3, 4, 5, 9, 14, 16)]}
out = {}
for name, cls in subsets.items():
    v = iou[cls]
    out[name] = {"iou": [None if np.isnan(x) else float(x) for x in v],
                 "miou": float(np.nanmean(v)) if np.any(~np.isnan(v)) else None}
out["acc"] = float(tp.sum() / conf.sum()) if conf.sum() else None
print(json.dumps(out))
