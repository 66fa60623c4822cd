"""Independent reference for trainer/tests/it/lse_numerics.rs.

Reads IN_DIR/inputs.safetensors and IN_DIR/inputs.json written by the Rust test and
computes every quantity of docs/method.md's losses and adaptation round the
straightforward way: PyTorch autograd for the losses, numpy loops over classes for
scores, entropies and normalisation, Python sorting for the ranking, the reference
implementation's per-pixel loop for the reliability mask, and
torch.nn.functional.interpolate(align_corners=True) for the generated examples.
Writes OUT_DIR/ref.safetensors and OUT_DIR/ref.json.

Definitions shared with lse.rs (documented there): a class group with max == min has
normalised entropy 0; a pixel whose predicted class has no threshold is unreliable;
ties in the ranking go to the lower image index.
"""

import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

IGNORE = 255


def losses(logits, labels, beta, gamma):
    out = {}
    # Source: torch's own cross-entropy with ignore_index.
    x = logits.double().clone().requires_grad_(True)
    loss = F.cross_entropy(x, labels, ignore_index=IGNORE)
    loss.backward()
    out["source_loss"] = loss.detach().reshape(1)
    out["source_grad"] = x.grad
    # Target: l over valid pixels, then the focal term, written out plainly.
    for name, focal in (("target_plain", False), ("target_focal", True)):
        x = logits.double().clone().requires_grad_(True)
        l_all = F.cross_entropy(x, labels, ignore_index=IGNORE, reduction="none")
        l = l_all[labels != IGNORE]
        loss = l.mean()
        if focal:
            pt = torch.exp(-l)
            loss = loss + beta * (l * (1 - pt) ** gamma).mean()
        loss.backward()
        out[name + "_loss"] = loss.detach().reshape(1)
        out[name + "_grad"] = x.grad
    return out


def entropy_np(p):
    # p: C x H x W float64; 0 log 0 = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(p), 0.0)
    return -t.sum(0)


def normalized_entropy_np(p):
    h = entropy_np(p)
    a = p.argmax(0)
    hn = np.zeros_like(h)
    for k in range(p.shape[0]):
        sel = a == k
        if not sel.any():
            continue
        lo, hi = h[sel].min(), h[sel].max()
        hn[sel] = 0.0 if hi == lo else (h[sel] - lo) / (hi - lo)
    return h, hn, a


def ent_normalization_reference(p):
    """The reference implementation's per-class min-max normalisation, as written
    there: a group whose entropies are all equal divides 0 by 0 and becomes NaN."""
    h = entropy_np(p)
    a = p.argmax(0)
    hn = h.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in np.unique(a):
            sel = a == k
            t = h[sel]
            hn[sel] = (t - t.min()) / (t.max() - t.min())
    return hn, a


def mask_reference_loop(p, taus):
    """The reference's per-pixel loop (`ignore iff H' >= tau`, so NaN keeps), with
    our one departure: a class without a threshold (None) is ignored."""
    C, H, W = p.shape
    hn, a = ent_normalization_reference(p)
    m = np.zeros((H, W), dtype=np.float32)
    for y in range(H):
        for x in range(W):
            tau = taus[int(a[y, x])]
            if tau is None:
                continue
            m[y, x] = 0.0 if hn[y, x] >= tau else 1.0
    return m


def class_scores_np(p):
    a = p.argmax(0)
    m = p.max(0)
    return [float(m[a == c].mean()) if (a == c).any() else None for c in range(p.shape[0])]


def select_py(scores, p, skip):
    C = len(skip)
    rankings, kept, boundary, confident = [], [], [], set()
    for c in range(C):
        if skip[c]:
            r = []
        else:
            r = [i for i in range(len(scores)) if scores[i][c] is not None]
            r.sort(key=lambda i: (-scores[i][c], i))
        k = int(math.floor(len(r) * p / C))
        rankings.append(r)
        kept.append(k)
        boundary.append(r[k] if k < len(r) else None)
        confident.update(r[:k])
    return rankings, kept, sorted(confident), boundary


def threshold_py(p, c):
    _, hn, a = normalized_entropy_np(p)
    sel = a == c
    return float(hn[sel].mean()) if sel.any() else None


def mask_per_pixel(p, taus):
    """The reference's formulation: a Python loop over every pixel."""
    C, H, W = p.shape
    h, hn, a = normalized_entropy_np(p)
    m = np.zeros((H, W), dtype=np.float32)
    for y in range(H):
        for x in range(W):
            k = int(a[y, x])
            tau = taus[k]
            if tau is not None and hn[y, x] < tau:
                m[y, x] = 1.0
    return m, hn


def generate_torch(image, probs, mask, windows):
    H, W = mask.shape
    imgs, labels, ups = [], [], []
    for (y, x, h, w) in windows:
        ci = image[:, y:y + h, x:x + w][None]
        cp = probs[:, y:y + h, x:x + w][None]
        cm = mask[y:y + h, x:x + w][None, None]
        ui = F.interpolate(ci, size=(H, W), mode="bilinear", align_corners=True)[0]
        up = F.interpolate(cp, size=(H, W), mode="bilinear", align_corners=True)[0]
        um = F.interpolate(cm, size=(H, W), mode="bilinear", align_corners=True)[0, 0]
        lab = up.argmax(0)
        lab[um == 0] = IGNORE
        imgs.append(ui)
        labels.append(lab)
        ups.append(up)
    return torch.stack(imgs), torch.stack(labels), torch.stack(ups)


def main():
    ind, outd = sys.argv[1], sys.argv[2]
    t = load_file(f"{ind}/inputs.safetensors")
    cfg = json.load(open(f"{ind}/inputs.json"))
    out = {}
    out.update(losses(t["logits"], t["labels"], cfg["beta"], cfg["gamma"]))

    probs = t["probs"].double().numpy()  # N x C x H x W
    n = probs.shape[0]
    ent, nent = [], []
    for i in range(n):
        h, hn, _ = normalized_entropy_np(probs[i])
        ent.append(h)
        nent.append(hn)
    out["entropy"] = torch.from_numpy(np.stack(ent))
    out["normalized_entropy"] = torch.from_numpy(np.stack(nent))

    scores = [class_scores_np(probs[i]) for i in range(n)]
    rankings, kept, confident, boundary = select_py(scores, cfg["p"], cfg["skip"])
    taus = [threshold_py(probs[b], c) if b is not None else None for c, b in enumerate(boundary)]

    masks, mask_hn = [], []
    for i in confident:
        m, hn = mask_per_pixel(probs[i], taus)
        masks.append(m)
        mask_hn.append(hn)
    out["masks"] = torch.from_numpy(np.stack(masks))
    # Thresholds at the edges of [0, 1] (strict < matters at H' = 0 and H' = 1).
    out["masks_custom"] = torch.from_numpy(
        np.stack([mask_per_pixel(probs[i], cfg["custom_taus"])[0] for i in range(n)])
    )

    # The reference's NaN semantics (DegenerateGroups::Keep): image 0, which holds
    # degenerate groups, as the boundary image of every class but the skipped one.
    hn0, a0 = ent_normalization_reference(probs[0])
    keep_taus = []
    for c in range(probs.shape[1]):
        sel = a0 == c
        keep_taus.append(None if cfg["skip"][c] or not sel.any() else float(np.mean(hn0[sel])))
    out["keep_normalized_entropy"] = torch.from_numpy(
        np.stack([ent_normalization_reference(probs[i])[0] for i in range(n)])
    )
    out["keep_taus"] = torch.tensor([np.nan if t is None else t for t in keep_taus], dtype=torch.float64)
    out["keep_has_tau"] = torch.tensor([t is not None for t in keep_taus])
    out["keep_masks"] = torch.from_numpy(np.stack([mask_reference_loop(probs[i], keep_taus) for i in range(n)]))

    windows = t["windows"].tolist()  # len(S) x K x 4
    images = t["images"]
    gi, gl, gp = [], [], []
    for j, i in enumerate(confident):
        a, b, c = generate_torch(images[i], t["probs"][i], torch.from_numpy(masks[j]), windows[j])
        gi.append(a)
        gl.append(b)
        gp.append(c)
    out["gen_images"] = torch.cat(gi)
    out["gen_labels"] = torch.cat(gl)
    out["gen_probs"] = torch.cat(gp)
    ign = torch.cat(gl).eq(IGNORE).double()
    save_file({k: v.contiguous() for k, v in out.items()}, f"{outd}/ref.safetensors")
    json.dump(
        {
            "scores": scores,
            "class_means": [[threshold_py(probs[i], c) for c in range(probs.shape[1])] for i in range(n)],
            "rankings": rankings,
            "kept": kept,
            "confident": confident,
            "boundary": boundary,
            "thresholds": taus,
            "ignored_share": float(ign.mean()),
            "iterations": -(-len(confident) * cfg["k"] * cfg["epochs"] // cfg["batch"]),
        },
        open(f"{outd}/ref.json", "w"),
    )


if __name__ == "__main__":
    main()
