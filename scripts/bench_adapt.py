"""Helpers of scripts/bench-adapt.sh (standard library only).

  bench_adapt.py choose OUT "LR1 LR2 ..."   the tuning split's choice, as JSON
  bench_adapt.py report OUT RESULTS_MD      docs/results.md (+ results.svg beside it)
"""
import json
import math
import os
import statistics
import sys
import time

ARMS = [
    ("source-only", "source-only model"),
    ("control", "control: source training continued"),
    ("self-training", "self-training (window scale 1.0)"),
    ("lse-nofocal", "LSE without focal term"),
    ("lse", "LSE with focal term"),
    ("oracle", "oracle: fine-tuned on target-train labels"),
]


def load(path):
    with open(path) as f:
        return json.load(f)


def choose(out, lrs):
    scores = {}
    for lr in lrs.split():
        rec = load(os.path.join(out, f"tune-lse-lr{lr}-s0", "run.json"))
        scores[lr] = rec["evaluation"]["miou"]
    best = max(scores, key=lambda k: scores[k])
    print(json.dumps({
        "lr": float(best),
        "criterion": "LSE (focal) mIoU on the tuning split after the last round, seed 0",
        "tune_miou": scores,
    }))


def runs(out):
    """{arm: [(seed, record or eval)]} for every finished arm."""
    found = {}
    for name in sorted(os.listdir(out)):
        d = os.path.join(out, name)
        if name == "source-only" and os.path.isfile(os.path.join(d, "eval.json")):
            found.setdefault("source-only", []).append((None, {"evaluation": load(os.path.join(d, "eval.json"))}))
            continue
        if name.startswith("tune-") or "-s" not in name:
            continue
        arm, seed = name.rsplit("-s", 1)
        rec_path = os.path.join(d, "run.json")
        if not os.path.isfile(os.path.join(d, "model.safetensors")) or not os.path.isfile(rec_path):
            continue
        found.setdefault(arm, []).append((int(seed), load(rec_path)))
    return found


def mean_sd(values):
    if not values:
        return None, None
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return m, sd


def miou(rec):
    return rec["evaluation"]["miou"] * 100.0


def seconds(rec):
    s = rec.get("sessions") or []
    return sum((x.get("ended") or x["started"]) - x["started"] for x in s) or None


def fmt(v, d=1):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def svg_bars(rows, path):
    """A bar chart of mean mIoU with min-max whiskers over seeds."""
    w, h, left, bottom, top = 760, 360, 250, 40, 40
    vmax = max((max(v) for _, v in rows if v), default=1.0) * 1.15
    bar_h = (h - top - bottom) / max(len(rows), 1)
    x = lambda v: left + (w - left - 30) * v / vmax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="16">Target val mIoU per arm (bar: mean over seeds, whisker: min-max)</text>']
    for t in range(0, int(vmax) + 1, 5):
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{h - bottom}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x(t):.1f}" y="{h - bottom + 16}" text-anchor="middle">{t}</text>')
    out.append(f'<text x="{left + (w - left) / 2}" y="{h - 6}" text-anchor="middle">mIoU (%), 19 classes</text>')
    for i, (label, vals) in enumerate(rows):
        y = top + i * bar_h + bar_h * 0.2
        bh = bar_h * 0.6
        out.append(f'<text x="{left - 8}" y="{y + bh / 2 + 4:.1f}" text-anchor="end">{label}</text>')
        if not vals:
            continue
        m = statistics.fmean(vals)
        color = "#d62728" if label.startswith("LSE with") else "#1f77b4"
        out.append(f'<rect x="{left}" y="{y:.1f}" width="{x(m) - left:.1f}" height="{bh:.1f}" fill="{color}"/>')
        out.append(f'<line x1="{x(min(vals)):.1f}" y1="{y + bh / 2:.1f}" x2="{x(max(vals)):.1f}" y2="{y + bh / 2:.1f}" stroke="black" stroke-width="2"/>')
        out.append(f'<text x="{x(max(vals)) + 6:.1f}" y="{y + bh / 2 + 4:.1f}">{m:.1f}</text>')
    out.append("</svg>")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(path + ".tmp", path)


def report(out, results, regen="scripts/bench-adapt.sh"):
    found = runs(out)
    tuning = load(os.path.join(out, "tuning.json")) if os.path.isfile(os.path.join(out, "tuning.json")) else None
    regime = regen.split("LSE_BENCH_REGIME=")[1].split()[0] if "LSE_BENCH_REGIME=" in regen else None
    title = f"the `{regime}` synthetic target (scripts/regimes/{regime}.json)" if regime else "the built-in synthetic domains"
    L = [f"# Results: LSE on {title}", "",
         f"Written by `scripts/bench-adapt.sh` on {time.strftime('%Y-%m-%d')} from the runs in "
         f"`{os.path.relpath(out)}`; regenerate with `{regen}` (it resumes). "
         "What the numbers say and why: `docs/synthetic-domains.md`.", ""]
    rows, summary = [], {}
    L += ["## mIoU per arm (target val, 19 classes)", "",
          "Wall times are per run on the machine that ran the benchmark, including any "
          "other load on it at the time.", "",
          "| arm | seeds | mIoU mean | spread (sd) | min | max | wall time per run (s) |",
          "|---|---|---|---|---|---|---|"]
    for arm, label in ARMS:
        rs = found.get(arm, [])
        vals = [miou(r) for _, r in rs]
        m, sd = mean_sd(vals)
        summary[arm] = m
        secs = [s for s in (seconds(r) for _, r in rs) if s]
        L.append(f"| {label} | {len(vals)} | {fmt(m, 2)} | {fmt(sd, 2)} | {fmt(min(vals) if vals else None, 2)} | "
                 f"{fmt(max(vals) if vals else None, 2)} | {fmt(statistics.fmean(secs) if secs else None, 0)} |")
        rows.append((label, vals))
    svg = os.path.splitext(results)[0] + ".svg"
    svg_bars(rows, svg)
    L += ["", f"![mIoU per arm]({os.path.basename(svg)})", ""]
    if summary.get("lse") is not None:
        L += ["## The goal: LSE (focal) at least 2 mIoU above each baseline, mean over seeds", ""]
        for arm in ("source-only", "control", "self-training"):
            if summary.get(arm) is not None:
                d = summary["lse"] - summary[arm]
                L.append(f"- vs {arm}: {d:+.2f} mIoU ({'met' if d >= 2 else 'not met'})")
        if summary.get("oracle") is not None and summary.get("source-only") is not None:
            L.append(f"- oracle gap (oracle - source-only): {summary['oracle'] - summary['source-only']:+.2f} mIoU")
        L.append("")
    per_class(L, found)
    rounds_table(L, found)
    settings(L, out, found, tuning)
    with open(results + ".tmp", "w") as f:
        f.write("\n".join(L) + "\n")
    os.replace(results + ".tmp", results)


def per_class(L, found):
    names = None
    table = {}
    for arm, label in ARMS:
        rs = found.get(arm, [])
        if not rs:
            continue
        pcs = [r["evaluation"]["per_class"] for _, r in rs]
        names = [c["class"] for c in pcs[0]]
        table[label] = [statistics.fmean([(p[i]["iou"] or 0.0) * 100 for p in pcs]) for i in range(len(names))]
    if not names:
        return
    labels = list(table)
    L += ["## Per-class IoU (mean over seeds, %)", "", "| class | " + " | ".join(labels) + " |",
          "|---|" + "---|" * len(labels)]
    for i, n in enumerate(names):
        L.append(f"| {n} | " + " | ".join(fmt(table[l][i]) for l in labels) + " |")
    L.append("")


def rounds_table(L, found):
    L += ["## Per round: pseudo-label precision and the premise", "",
          "Means over seeds. Kept %: share of the confident images' labelled pixels kept by the "
          "reliability mask; precision: of the kept and of the dropped pseudo-labels against the "
          "ground truth (measured only, never used). H: mean normalised entropy H/ln C of the "
          "predictions on full target images, on their up-scaled windows, and on source images.", "",
          "| arm | round | p | \\|S\\| | kept % | kept precision % | dropped precision % | "
          "confident acc. % | others acc. % | H full | H windows | H source | val mIoU |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ("self-training", "lse-nofocal", "lse"):
        rs = found.get(arm, [])
        if not rs:
            continue
        n_rounds = min(len(r["rounds"]) for _, r in rs)
        for k in range(n_rounds):
            rr = [r["rounds"][k] for _, r in rs]
            d = [x.get("diagnostics") or {} for x in rr]
            g = lambda key: mean_sd([v for v in (x.get(key) for x in d) if v is not None])[0]
            pr = lambda key: mean_sd([v for v in (x.get("premise", {}).get(key) for x in d) if v is not None])[0]
            pc = lambda v: None if v is None else v * 100
            L.append(f"| {arm} | {k + 1} | {rr[0]['p']:.2f} | {fmt(statistics.fmean([x['confident'] for x in rr]), 0)} | "
                     f"{fmt(pc(g('kept_share')))} | {fmt(pc(g('kept_precision')))} | {fmt(pc(g('dropped_precision')))} | "
                     f"{fmt(pc(g('confident_accuracy')))} | {fmt(pc(g('others_accuracy')))} | "
                     f"{fmt(pr('target_full'), 3)} | {fmt(pr('target_windows'), 3)} | {fmt(pr('source'), 3)} | "
                     f"{fmt(pc(mean_sd([x['miou'] for x in rr if x.get('miou') is not None])[0]), 2)} |")
    L.append("")
    conf = []
    for _, r in found.get("lse", []):
        for x in r["rounds"]:
            for c in (x.get("diagnostics") or {}).get("confusions", [])[:3]:
                conf.append(f"round {x['round']}: {c['truth']} → {c['predicted']} ({c['share_of_kept'] * 100:.1f} % of kept)")
    if conf:
        L += ["Most frequent errors among LSE's kept pseudo-labels (all seeds):", ""]
        L += [f"- {c}" for c in sorted(set(conf))[:15]]
        L.append("")


def settings(L, out, found, tuning):
    L += ["## Settings", ""]
    if tuning:
        L.append(f"- Adaptation learning rate {tuning['lr']:g}, chosen by {tuning['criterion']}: "
                 + ", ".join(f"lr {k}: {v * 100:.2f}" for k, v in tuning["tune_miou"].items()) + ".")
    lse = found.get("lse", [])
    if lse:
        cfg_path = os.path.join(out, f"lse-s{lse[0][0]}", "config.toml")
        if os.path.isfile(cfg_path):
            keep = ("source_size", "target_size", "batch_size", "p_schedule", "patches", "window_scale",
                    "epochs_per_round", "focal", "focal_beta", "focal_gamma", "degenerate_groups", "lr_weights")
            with open(cfg_path) as f:
                lines = [l.strip() for l in f if l.split("=")[0].strip() in keep]
            L.append("- LSE arm configuration: `" + "`, `".join(lines) + "`.")
    L.append("- Every arm starts from the same committed source-only model; seeds change the "
             "windows, the order of examples and source batches, and dropout.")
    L.append("")


def main():
    cmd = sys.argv[1]
    if cmd == "choose":
        choose(sys.argv[2], sys.argv[3])
    elif cmd == "report":
        report(*sys.argv[2:5])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
