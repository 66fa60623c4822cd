"""Independent check of a whole LSE round as `lse-train adapt` wires it.

Written from the method (docs/method.md) and the reference implementation's order of
operations, in plain PyTorch/numpy, sharing no code with the trainer:

  round_reference.py CONFIG_JSON

CONFIG_JSON names the dump folder written by `lse-train adapt --dump-rounds DIR`, the
checkpoints the rounds start from, the target images and the settings. For round 1
it recomputes, from the starting weights and the target images alone: the class
scores and rankings, the confident set, the boundary images and thresholds (the
reference's NaN semantics for degenerate groups), the reliable masks, the windows'
pseudo-labels (for the trainer's windows), the number of iterations, and the
parameters after the first optimiser step (the trainer's source batch and example
picks, its dropout seed: forward+backward source, forward+backward target, one Adam
step). For round 2 it recomputes the ranking from the weights the trainer saved at
the end of round 1. Every mismatch is printed; the exit code is 1 if any.
"""
import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fcn8s_reference import FCN8s  # noqa: E402

IGNORE = 255
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def load_net(path, classes, width):
    net = FCN8s(classes, width)
    sd = load_file(path)
    own = net.state_dict()
    net.load_state_dict({k: sd[k] for k in own})
    return net


def image_input(path, mean_bgr):
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    bgr = rgb[:, :, ::-1] - np.array(mean_bgr, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))


def predict(net, x):
    net.eval()
    with torch.no_grad():
        return F.softmax(net(x[None]), dim=1)[0]


def scores_of(p):
    a = p.argmax(0)
    m = p.max(0).values
    return [float(m[a == c].double().mean()) if (a == c).any() else None for c in range(p.shape[0])]


def select(scores, p, classes):
    rankings, kept, boundary, confident = [], [], [], set()
    for c in range(classes):
        r = [i for i in range(len(scores)) if scores[i][c] is not None]
        r.sort(key=lambda i: (-scores[i][c], i))
        k = int(math.floor(len(r) * p / classes + 1e-9))
        rankings.append(r)
        kept.append(k)
        boundary.append(r[k] if k < len(r) else None)
        confident.update(r[:k])
    return rankings, kept, boundary, sorted(confident)


def normalised_entropy(p):
    """The reference's entropy and per-class min-max normalisation (0/0 -> NaN)."""
    p = p.double().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(0)
        a = p.argmax(0)
        hn = h.copy()
        for k in np.unique(a):
            sel = a == k
            hn[sel] = (h[sel] - h[sel].min()) / (h[sel].max() - h[sel].min())
    return hn, a


def reliable_mask(p, taus):
    hn, a = normalised_entropy(p)
    m = np.zeros(hn.shape, dtype=np.float32)
    for y in range(hn.shape[0]):
        for x in range(hn.shape[1]):
            t = taus[a[y, x]]
            if t is not None:
                m[y, x] = 0.0 if hn[y, x] >= t else 1.0
    return torch.from_numpy(m)


def up(t, size):
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=True)[0]


def window_image(x, win):
    y0, x0, h, w = win
    return up(x[:, y0:y0 + h, x0:x0 + w], tuple(x.shape[1:]))


def example(x, p, m, win):
    y0, x0, h, w = win
    size = tuple(x.shape[1:])
    img = up(x[:, y0:y0 + h, x0:x0 + w], size)
    prob = up(p[:, y0:y0 + h, x0:x0 + w], size)
    mask = up(m[None, y0:y0 + h, x0:x0 + w], size)[0]
    lab = prob.argmax(0)
    lab[mask == 0] = IGNORE
    return img, lab


def ce(logits, labels):
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none")[labels != IGNORE]


def round_one(cfg, imgs, net, dump, step):
    C = cfg["classes"]
    probs = [predict(net, x) for x in imgs]
    scores = [scores_of(p) for p in probs]
    theirs = dump["scores"].numpy()
    ours = np.array([[np.nan if s is None else s for s in row] for row in scores])
    check(np.array_equal(np.isnan(ours), np.isnan(theirs)), "round 1: classes predicted per image")
    d = np.nanmax(np.abs(ours - theirs))
    check(d < 1e-5, f"round 1: class scores (max diff {d:.2e})")
    rankings, kept, boundary, confident = select(scores, cfg["p"][0], C)
    check(all(dump[f"ranking.{c:02d}"].tolist() == rankings[c] for c in range(C)), "round 1: rankings")
    check(dump["kept"].tolist() == kept, f"round 1: kept per class {kept}")
    check(dump["confident"].tolist() == confident, f"round 1: confident set {confident}")
    check(dump["boundary"].tolist() == [-1 if b is None else b for b in boundary], "round 1: boundary images")
    taus = []
    for c in range(C):
        if boundary[c] is None:
            taus.append(None)
            continue
        hn, a = normalised_entropy(probs[boundary[c]])
        taus.append(float(np.mean(hn[a == c])))
    t_dump, has = dump["thresholds"].numpy(), dump["has_threshold"].numpy()
    ok = all((t is None) == (h == 0) for t, h in zip(taus, has))
    ok = ok and all(
        t is None or (math.isnan(t) and math.isnan(td)) or abs(t - td) < 1e-5 for t, td in zip(taus, t_dump)
    )
    if not ok:
        print("ours  ", taus)
        print("theirs", t_dump.tolist(), has.tolist())
    check(ok, "round 1: thresholds")
    # Masks and the windows' pseudo-labels, for the trainer's windows.
    windows, labels = dump["windows"].tolist(), dump["labels"]
    K = cfg["patches"]
    ours_labels = {}
    differ = total = 0
    for j, i in enumerate(confident):
        m = reliable_mask(probs[i], taus)
        for k in range(K):
            _, lab = example(imgs[i], probs[i], m, windows[j][k])
            ours_labels[(j, k)] = lab
            differ += int((lab != labels[j, k].long()).sum())
            total += lab.numel()
    share = differ / max(total, 1)
    check(share <= 1e-3, f"round 1: windows' pseudo-labels and masks ({differ} of {total} pixels differ)")
    ignored = sum(int((l == IGNORE).sum()) for l in ours_labels.values())
    check(0 < ignored < total, f"round 1: the mask ignores some pixels, not all ({ignored} of {total})")
    its = -(-len(confident) * K * cfg["epochs_per_round"] // cfg["batch_size"])
    check(int(dump["iterations"][0]) == its, f"round 1: iterations = ceil(|S| K epochs / B) = {its}")
    first_step(cfg, imgs, net, probs, confident, ours_labels, windows, step)


def first_step(cfg, imgs, net, probs, confident, ours_labels, windows, step):
    picks = step["picks"].tolist()
    tx = torch.stack([window_image(imgs[confident[j]], windows[j][k]) for j, k in picks])
    ty = torch.stack([ours_labels[(j, k)] for j, k in picks])
    sx, sy = step["source_images"], step["source_labels"].long()
    weights = [p for n, p in net.named_parameters() if n.endswith(".weight") and not n.startswith("upscore")]
    biases = [p for n, p in net.named_parameters() if n.endswith(".bias")]
    for n, p in net.named_parameters():
        p.requires_grad_(not n.startswith("upscore"))
    lr_w, lr_b = step["lr"].tolist()
    opt = torch.optim.Adam([{"params": weights, "lr": lr_w}, {"params": biases, "lr": lr_b}],
                           betas=tuple(cfg["adam_betas"]), eps=cfg["adam_eps"])
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net.train()
    torch.manual_seed(int(step["seed"][0]))
    opt.zero_grad()
    ce(net(sx), sy).mean().backward()
    lt = ce(net(tx), ty)
    loss = lt.mean()
    if cfg["focal"]:
        beta, gamma = cfg["focal_beta"], cfg["focal_gamma"]
        loss = loss + beta * (lt * (1 - torch.exp(-lt)) ** gamma).mean()
    loss.backward()
    opt.step()
    worst, name = 0.0, ""
    for n, p in net.named_parameters():
        ours = p.detach() - before[n]
        theirs = step[f"param.{n}"] - before[n]
        d = float((ours - theirs).abs().max())
        if d > worst:
            worst, name = d, n
    moved = float(max((p.detach() - before[n]).abs().max() for n, p in net.named_parameters()))
    check(moved > 0.5 * lr_w, f"round 1: the first step moves the weights ({moved:.2e})")
    check(worst < 0.05 * lr_w,
          f"round 1: parameters after the first step (max update diff {worst:.2e} in {name}, lr {lr_w:.1e})")


def round_two(cfg, imgs, net, dump):
    scores = [scores_of(predict(net, x)) for x in imgs]
    ours = np.array([[np.nan if s is None else s for s in row] for row in scores])
    theirs = dump["scores"].numpy()
    same = np.array_equal(np.isnan(ours), np.isnan(theirs)) and np.nanmax(np.abs(ours - theirs)) < 1e-5
    check(same, "round 2: ranked with the weights at the end of round 1")
    rankings, _, _, confident = select(scores, cfg["p"][1], cfg["classes"])
    check(dump["confident"].tolist() == confident, "round 2: confident set")


def main():
    cfg = json.load(open(sys.argv[1]))
    torch.set_num_threads(cfg.get("threads", 2))
    imgs = [image_input(p, cfg["mean_bgr"]) for p in cfg["target_images"]]
    d = cfg["dump"]
    net = load_net(cfg["init"], cfg["classes"], cfg["width"])
    round_one(cfg, imgs, net, load_file(f"{d}/round-01-prepare.safetensors"),
              load_file(f"{d}/round-01-step.safetensors"))
    net = load_net(cfg["round1"], cfg["classes"], cfg["width"])
    round_two(cfg, imgs, net, load_file(f"{d}/round-02-prepare.safetensors"))
    print(f"{len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
