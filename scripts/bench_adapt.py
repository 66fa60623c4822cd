"""Helpers of scripts/bench-adapt.sh (standard library only).

  bench_adapt.py choose OUT "LR1 LR2 ..."   the tuning split's lr choice, as JSON
  bench_adapt.py variant-args NAME          lse-train flags of a window variant
  bench_adapt.py combination OUT            the best placement with the best mask (or nothing)
  bench_adapt.py multiscale OUT             the best variant so far with multi-scale windows
  bench_adapt.py choose-variant OUT         the tuning split's window variant choice, as JSON
  bench_adapt.py adopt FROM_OUT OUT REGIME  another regime's lr and variant choices, unchanged
  bench_adapt.py report OUT RESULTS_MD [REGEN] [PROTOCOL]
                                            docs/results.md (+ results.svg beside it)
"""
import json
import math
import os
import shutil
import statistics
import sys
import time

ARMS = [
    ("source-only", "source-only model"),
    ("control", "control: source training continued"),
    ("self-training", "self-training (window scale 1.0)"),
    ("lse-nofocal", "LSE without focal term"),
    ("lse", "LSE with focal term"),
    ("lse-chosen", "LSE, window variant chosen on the tuning split"),
    ("oracle", "oracle: fine-tuned on target-train labels"),
]
ADAPTING = ("self-training", "lse-nofocal", "lse", "lse-chosen")
PROTOCOLS = {
    "reference": "the reference code's protocol: batch 1 (one source image and one generated "
                 "example per iteration), p = 0.10 ... 0.40 (7 rounds), Adam (0.9, 0.99)",
    "short": "the earlier short protocol: batch 4, p = 0.10, 0.15, 0.20 (3 rounds), Adam (0.9, 0.99)",
}


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
        "lr_name": best,
        "criterion": "LSE (focal) mIoU on the tuning split after the last round, seed 0",
        "tune_miou": scores,
    }))


# Window variants: a name is "reference" or parts joined by "+", each one setting.
VARIANT_PARTS = {
    "grid": ["--window-placement", "grid"],
    "nearest": ["--window-mask", "nearest"],
    "any-ignored": ["--window-mask", "any-ignored"],
    "ms": ["--window-scale", "0.5,0.75"],
}
PLACEMENTS = ["reference", "grid"]
MASKS = ["reference", "nearest", "any-ignored"]


def variant_args(name):
    if name == "reference":
        return []
    args = []
    for part in name.split("+"):
        if part not in VARIANT_PARTS:
            raise SystemExit(f"unknown window variant part '{part}' in '{name}'")
        args += VARIANT_PARTS[part]
    return args


def variant_dir(out, name):
    """The tuning run of a variant (the reference is the chosen lr's run)."""
    if name == "reference":
        lr = load(os.path.join(out, "tuning.json"))["lr_name"]
        return os.path.join(out, f"tune-lse-lr{lr}-s0")
    return os.path.join(out, f"tune-{name}-s0")


def tune_score(out, name):
    """LSE's tuning-split mIoU after the last round, or None when the run is not finished."""
    d = variant_dir(out, name)
    if not os.path.isfile(os.path.join(d, "model.safetensors")):
        return None
    return load(os.path.join(d, "run.json"))["evaluation"]["miou"]


def best_of(out, names):
    """The best finished variant of `names` (ties: the earlier, i.e. the simpler)."""
    scored = [(n, tune_score(out, n)) for n in names]
    scored = [(n, v) for n, v in scored if v is not None]
    return max(scored, key=lambda nv: nv[1])[0] if scored else "reference"


def combination(out):
    place, mask = best_of(out, PLACEMENTS), best_of(out, MASKS)
    if place != "reference" and mask != "reference":
        print(f"{place}+{mask}")


def multiscale(out):
    names = ["reference", "grid", "nearest", "any-ignored"]
    combo = f"{best_of(out, PLACEMENTS)}+{best_of(out, MASKS)}"
    if tune_score(out, combo) is not None:
        names.append(combo)
    best = best_of(out, names)
    print("ms" if best == "reference" else f"{best}+ms")


def tuned_variants(out):
    names = ["reference"]
    for name in sorted(os.listdir(out)):
        if name.startswith("tune-") and not name.startswith("tune-lse-lr") and name.endswith("-s0"):
            names.append(name[len("tune-"):-len("-s0")])
    return names


def choose_variant(out):
    names = tuned_variants(out)
    best = best_of(out, names)
    print(json.dumps({
        "variant": best,
        "flags": variant_args(best),
        "criterion": "LSE (focal) mIoU on the tuning split after the last round, seed 0, "
                     "at the chosen lr; ties go to the simpler variant",
        "tune_miou": {n: tune_score(out, n) for n in names},
        "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1))


def write_text(path, text):
    """`text` into `path` through a temporary file of this process (instances running
    other seeds write the same pages), so a reader never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, rec):
    write_text(path, json.dumps(rec, indent=1) + "\n")


def adopt(src_out, out, regime):
    """The lr and window-variant choices made on `regime`'s tuning split, unchanged, as
    this target's (marked as adopted: this target's own tuning split chose nothing)."""
    for name in ("tuning.json", "choice.json"):
        src = os.path.join(src_out, name)
        if not os.path.isfile(src):
            raise SystemExit(f"no {name} in {src_out}: run LSE_BENCH_REGIME={regime} "
                             "scripts/bench-adapt.sh ablate first")
        rec = load(src)
        rec["adopted_from"] = regime
        if name == "tuning.json":  # where the adopted choice's tuning runs are
            rec["adopted_runs"] = os.path.abspath(src_out)
        write_json(os.path.join(out, name), rec)


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
    write_text(path, "\n".join(out) + "\n")


def arm_labels(adopted_from):
    """(arm, label) of every arm, the chosen LSE's naming the regime its choice came from."""
    if not adopted_from:
        return ARMS
    chosen = f"LSE, window variant chosen on the `{adopted_from}` tuning split"
    return [(arm, chosen if arm == "lse-chosen" else label) for arm, label in ARMS]


def report(out, results, regen="scripts/bench-adapt.sh", protocol="reference"):
    found = runs(out)
    tuning = load(os.path.join(out, "tuning.json")) if os.path.isfile(os.path.join(out, "tuning.json")) else None
    adopted_from = (tuning or {}).get("adopted_from")
    arms = arm_labels(adopted_from)
    regime = regen.split("LSE_BENCH_REGIME=")[1].split()[0] if "LSE_BENCH_REGIME=" in regen else None
    if adopted_from and "LSE_BENCH_CHOICE_FROM=" not in regen:
        ran = " ".join(arm for arm, _ in ARMS if arm != "source-only" and found.get(arm))
        regen = f'LSE_BENCH_CHOICE_FROM={adopted_from} LSE_BENCH_ARMS="{ran}" {regen}'
    title = f"the `{regime}` synthetic target (scripts/regimes/{regime}.json)" if regime else "the built-in synthetic domains"
    L = [f"# Results: LSE on {title}", "",
         f"Protocol: {PROTOCOLS[protocol]}.", "",
         f"Written by `scripts/bench-adapt.sh` on {time.strftime('%Y-%m-%d')} from the runs in "
         f"`{os.path.relpath(out)}`; regenerate with `{regen}` (it resumes). "
         "What the numbers say and why: `docs/synthetic-domains.md`. Arms with fewer seeds than "
         "the others are still running or were cut for time; the seeds column says which.", ""]
    rows, summary = [], {}
    L += ["## mIoU per arm (target val, 19 classes)", "",
          "Wall times are per run on the machine that ran the benchmark, including any "
          "other load on it at the time.", "",
          "| arm | seeds | mIoU mean | spread (sd) | min | max | wall time per run (s) |",
          "|---|---|---|---|---|---|---|"]
    not_run = [label for arm, label in arms if not found.get(arm)]
    for arm, label in arms:
        rs = found.get(arm, [])
        if not rs:
            continue
        vals = [miou(r) for _, r in rs]
        m, sd = mean_sd(vals)
        summary[arm] = m
        secs = [s for s in (seconds(r) for _, r in rs) if s]
        L.append(f"| {label} | {len(vals)} | {fmt(m, 2)} | {fmt(sd, 2)} | {fmt(min(vals) if vals else None, 2)} | "
                 f"{fmt(max(vals) if vals else None, 2)} | {fmt(statistics.fmean(secs) if secs else None, 0)} |")
        rows.append((label, vals))
    if not_run:
        L += ["", "Not run (yet) on this target: " + "; ".join(not_run) + "."]
    svg = os.path.splitext(results)[0] + ".svg"
    svg_bars(rows, svg)
    L += ["", f"![mIoU per arm]({os.path.basename(svg)})", ""]
    goal(L, found, summary, arms)
    ablation(L, out, tuning)
    per_class(L, found, arms)
    rounds_table(L, found)
    window_table(L, out, found, results)
    window_domains(L, out)
    settings(L, out, found, tuning)
    write_text(results, "\n".join(L) + "\n")


def goal(L, found, summary, arms):
    """LSE (each variant run) against the baselines: the difference of means, and the
    per-seed differences (same seed, same data order) with their spread."""
    for arm in ("lse", "lse-chosen"):
        if summary.get(arm) is None:
            continue
        label = dict(arms)[arm]
        L += [f"## The goal: {label} at least 2 mIoU above each baseline, mean over seeds", ""]
        mine = {seed: miou(r) for seed, r in found.get(arm, [])}
        for base in ("source-only", "control", "self-training"):
            if summary.get(base) is None:
                continue
            d = summary[arm] - summary[base]
            line = f"- vs {base}: {d:+.2f} mIoU ({'met' if d >= 2 else 'not met'})"
            theirs = {seed: miou(r) for seed, r in found.get(base, [])}
            paired = [mine[k] - theirs[k] for k in sorted(mine) if k in theirs]
            if paired and base != "source-only":
                m, sd = mean_sd(paired)
                line += (f"; per seed {', '.join(f'{x:+.2f}' for x in paired)} "
                         f"(mean {m:+.2f}, sd {sd:.2f}, {'all' if min(paired) > 0 else 'not all'} positive)")
            L.append(line)
        if summary.get("oracle") is not None and summary.get("source-only") is not None:
            L.append(f"- oracle gap (oracle - source-only): {summary['oracle'] - summary['source-only']:+.2f} mIoU")
        L.append("")


def ablation(L, out, tuning):
    """The tuning split's lr and window-variant runs (seed 0), and the choice."""
    if not tuning:
        return
    if tuning.get("adopted_from"):
        adopted(L, out, tuning)
        return
    L += ["## Choices on the tuning split (60 labelled images of their own seed; never val)", "",
          "LSE (focal) mIoU on the tuning split, seed 0, per round; the choice is the best "
          "after the last round.", ""]
    tuning_rows(L, out, tuning)
    L.append("")
    L.append(f"- Learning rate chosen: {tuning['lr']:g}.")
    choice_path = os.path.join(out, "choice.json")
    if os.path.isfile(choice_path):
        c = load(choice_path)
        L.append(f"- Window variant chosen: **{c['variant']}** ({' '.join(c['flags']) or 'the reference settings'}), "
                 f"recorded {c['chosen_at']} before any val run of it.")
    L.append("")


def tuning_rows(L, out, tuning):
    """The table of the tuning split's lr and window-variant runs in `out`."""
    L += ["| run | settings | " + " | ".join(f"round {k}" for k in range(1, 8)) + " | after last round |",
          "|---|---|" + "---|" * 8]
    for lr in tuning["tune_miou"]:
        ablation_row(L, os.path.join(out, f"tune-lse-lr{lr}-s0"), f"lr {lr}", "reference windows")
    for name in tuned_variants(out)[1:]:
        ablation_row(L, variant_dir(out, name), name, " ".join(variant_args(name)))


def adopted(L, out, tuning):
    """The choices taken over from another regime's tuning split (`tuning`: the adopted
    copy, whose candidates are the ones run there)."""
    c = load(os.path.join(out, "choice.json"))
    regime = tuning["adopted_from"]
    L += [f"## Choices: adopted from the `{regime}` tuning split", "",
          f"This target's own tuning split chose nothing: the learning rate and the window "
          f"variant are the ones chosen on the `{regime}` target's tuning split "
          f"(`docs/results-{regime}.md`, its ablation table), taken over unchanged and "
          "committed before any val run here.", "",
          f"- Learning rate {tuning['lr']:g} (tuning-split mIoU there: "
          + ", ".join(f"lr {k}: {v * 100:.2f}" for k, v in tuning["tune_miou"].items()) + ").",
          f"- Window variant **{c['variant']}** ({' '.join(c['flags']) or 'the reference settings'}), "
          f"chosen {c['chosen_at']} (there: "
          + ", ".join(f"{k}: {v * 100:.2f}" for k, v in c["tune_miou"].items() if v is not None) + ").",
          ""]
    runs_dir = tuning.get("adopted_runs")
    if runs_dir and os.path.isdir(runs_dir):
        L += [f"The `{regime}` tuning split's runs the choice was made from (LSE, focal, seed 0; "
              "mIoU per round):", ""]
        tuning_rows(L, runs_dir, tuning)
        L.append("")


def ablation_row(L, d, name, settings_text):
    rec_path = os.path.join(d, "run.json")
    if not os.path.isfile(rec_path):
        return
    rec = load(rec_path)
    per_round = [r.get("miou") for r in rec.get("rounds", [])]
    cells = [fmt(None if v is None else v * 100, 2) for v in per_round] + ["–"] * (7 - len(per_round))
    done = os.path.isfile(os.path.join(d, "model.safetensors"))
    final = fmt(rec["evaluation"]["miou"] * 100, 2) if done and rec.get("evaluation") else "running"
    L.append(f"| {name} | `{settings_text}` | " + " | ".join(cells[:7]) + f" | {final} |")


def window_table(L, out, found, results):
    """What each adapting arm trains on: window-level ignored share and precision, where
    the trained pixels come from, and the coverage maps (copied from seed 0's run)."""
    rows = []
    for arm in ADAPTING:
        for seed, r in found.get(arm, []):
            ws = [x["diagnostics"]["window"] for x in r["rounds"]
                  if (x.get("diagnostics") or {}).get("window")]
            if not ws:
                continue
            trained = sum(w["trained_pixels"] for w in ws)
            wmean = lambda key: sum((w[key] or 0) * w["trained_pixels"] for w in ws) / max(trained, 1)
            pixels = sum(w["examples_pixels"] for w in ws)
            ignored = sum((w["ignored_share"] or 0) * w["examples_pixels"] for w in ws) / max(pixels, 1)
            rows.append((arm, seed, ignored, wmean("precision"), wmean("central_quarter_share"),
                         wmean("top_bottom_bands_share")))
    if not rows:
        return
    L += ["## What each arm trains on (window level, all rounds)", "",
          "Every generated example after upsampling and masking, against its window's ground "
          "truth (cut and brought to size by nearest neighbour); measured only, never used. "
          "Uniform coverage puts 25 % of the trained pixels in the central quarter and 50 % in "
          "the top and bottom quarter-bands.", "",
          "| arm | seed | ignored % | precision of trained labels % | central quarter % | top + bottom bands % |",
          "|---|---|---|---|---|---|"]
    for arm, seed, ign, prec, cq, tb in rows:
        L.append(f"| {arm} | {seed} | {fmt(ign * 100)} | {fmt(prec * 100)} | {fmt(cq * 100)} | {fmt(tb * 100)} |")
    L.append("")
    maps = []
    base = os.path.splitext(results)[0]
    for arm in ADAPTING:
        seeds = sorted(seed for seed, _ in found.get(arm, []))
        if not seeds:
            continue
        src = os.path.join(out, f"{arm}-s{seeds[0]}", "coverage.png")
        if os.path.isfile(src):
            dst = f"{base}-coverage-{arm}.png"
            shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
            maps.append((arm, os.path.basename(dst)))
    if maps:
        L += ["Coverage maps (seed 0, all rounds): trained pixels per image position relative to a "
              "uniform spread, from 0 (dark blue) through 1 to 3 or more (yellow); the bar under "
              "each map is the scale.", "",
              "| " + " | ".join(a for a, _ in maps) + " |", "|" + "---|" * len(maps),
              "| " + " | ".join(f"![{a}]({f})" for a, f in maps) + " |", ""]
    per_class_window(L, found)


WINDOW_DOMAINS_MD = "window-domains.md"  # written into OUT by scripts/window_domains.py


def window_domains(L, out):
    """The finished models on val, on val's upsampled windows and on val with the windows'
    look (scripts/window_domains.py, when it has run on these arms)."""
    path = os.path.join(out, WINDOW_DOMAINS_MD)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        table = f.read().strip()
    L += ["## The models on images that look like LSE's windows (diagnostic)", "",
          "Every finished model on three versions of val: as it is; as the 2x2 grid of "
          "scale-0.5 windows of each image, upsampled 2x as LSE's examples are (the windows' "
          "look and object scale); and subsampled by 2 and upsampled back (the windows' look "
          "at the full image's object scale). It trains and chooses nothing. "
          "`docs/synthetic-domains.md` reads it.", "", table, ""]


def per_class_window(L, found):
    """Per class: precision of the trained window labels, mean over seeds and rounds."""
    table, names = {}, None
    for arm in ADAPTING:
        acc = {}
        for _, r in found.get(arm, []):
            for x in r["rounds"]:
                w = (x.get("diagnostics") or {}).get("window")
                if not w:
                    continue
                names = [c["class"] for c in w["per_class"]]
                for i, c in enumerate(w["per_class"]):
                    if c["precision"] is not None and c["trained_share"]:
                        px = c["trained_share"] * w["trained_pixels"]
                        a = acc.setdefault(i, [0.0, 0.0])  # precision x pixels, pixels
                        a[0] += c["precision"] * px
                        a[1] += px
        if acc:
            total = sum(a[1] for a in acc.values())
            table[arm] = {i: (a[0] / a[1], a[1] / total) for i, a in acc.items()}
    if not table or not names:
        return
    arms = list(table)
    L += ["Per class: precision of the trained window labels and the class's share of the trained "
          "pixels (%, all seeds and rounds).", "",
          "| class | " + " | ".join(f"{a} precision | {a} share" for a in arms) + " |",
          "|---|" + "---|---|" * len(arms)]
    for i, n in enumerate(names):
        cells = []
        for a in arms:
            p, sh = table[a].get(i, (None, None))
            cells += [fmt(None if p is None else p * 100), fmt(None if sh is None else sh * 100)]
        L.append(f"| {n} | " + " | ".join(cells) + " |")
    L.append("")


def per_class(L, found, arms):
    names = None
    table = {}
    for arm, label in arms:
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
    for arm in ADAPTING:
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
        where = f" (on the `{tuning['adopted_from']}` target)" if tuning.get("adopted_from") else ""
        L.append(f"- Adaptation learning rate {tuning['lr']:g}, chosen by {tuning['criterion']}{where}: "
                 + ", ".join(f"lr {k}: {v * 100:.2f}" for k, v in tuning["tune_miou"].items()) + ".")
    arm = next((a for a in ("lse", "lse-chosen") if found.get(a)), None)
    if arm:
        cfg_path = os.path.join(out, f"{arm}-s{found[arm][0][0]}", "config.toml")
        if os.path.isfile(cfg_path):
            keep = ("source_size", "target_size", "batch_size", "p_schedule", "patches", "window_scales",
                    "window_placement", "window_mask",
                    "epochs_per_round", "focal", "focal_beta", "focal_gamma", "degenerate_groups", "lr_weights")
            with open(cfg_path) as f:
                lines = [l.strip() for l in f if l.split("=")[0].strip() in keep]
            name = "LSE" if arm == "lse" else "Chosen LSE"
            L.append(f"- {name} arm configuration: `" + "`, `".join(lines) + "`.")
    L.append("- Every arm starts from the same committed source-only model; seeds change the "
             "windows, the order of examples and source batches, and dropout.")
    L.append("")


def main():
    cmd = sys.argv[1]
    if cmd == "choose":
        choose(sys.argv[2], sys.argv[3])
    elif cmd == "variant-args":
        print(" ".join(variant_args(sys.argv[2])))
    elif cmd == "combination":
        combination(sys.argv[2])
    elif cmd == "multiscale":
        multiscale(sys.argv[2])
    elif cmd == "choose-variant":
        choose_variant(sys.argv[2])
    elif cmd == "adopt":
        adopt(*sys.argv[2:5])
    elif cmd == "report":
        report(*sys.argv[2:6])
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
