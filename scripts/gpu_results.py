#!/usr/bin/env python3
"""Writes gpu-results.json and gpu-results.md from the step records of
scripts/gpu-run.sh (one JSON object per line: step, needs_gpu, status, seconds, note,
results). Called after every few steps, so a run stopped early still leaves its results.

  gpu_results.py STEPS.jsonl RESULTS_DIR
"""
import json
import os
import sys


def train_summary(r):
    """lse-train vs PyTorch per precision: the mean of the A/B and B/A runs."""
    rows = []
    for amp in ("off", "bf16"):
        rust = [r.get(f"rust_{amp}_{o}_ms") for o in ("ab", "ba")]
        torch = [r.get(f"torch_{amp}_{o}_ms") for o in ("ab", "ba")]
        if None in rust or None in torch:
            continue
        rm, tm = sum(rust) / 2, sum(torch) / 2
        def peak(impl):
            got = [r[k] for k in (f"{impl}_{amp}_{o}_peak_mib" for o in ("ab", "ba")) if k in r]
            return max(got) if got else None

        rows.append({"amp": amp, "lse_train_ms": rm, "pytorch_ms": tm, "ratio": rm / tm,
                     "lse_train_runs_ms": rust, "pytorch_runs_ms": torch,
                     "lse_train_peak_mib": peak("rust"), "pytorch_peak_mib": peak("torch")})
    return rows


def markdown(doc):
    probe = next((s["results"] for s in doc["steps"] if s["step"] == "probe"), {})
    out = ["# GPU check results (scripts/gpu-run.sh)", ""]
    out.append(f"- machine: {probe.get('machine', '?')}, GPU: {probe.get('gpu', '?')}, driver "
               f"{probe.get('driver', '?')}, torch {probe.get('torch', '?')} (git {probe.get('torch_git', '?')}, "
               f"CUDA {probe.get('torch_cuda', '?')}), ONNX Runtime {probe.get('ort', '?')} "
               f"({probe.get('ort_providers', '?')})")
    if doc["dry_run"]:
        out.append("- **dry run**: the steps that need a GPU were skipped; no figure below is a GPU measurement")
    if doc["rehearsal"]:
        out.append("- **rehearsal**: the steps that need a GPU ran on the CPU; no figure below is a GPU measurement")
    out += ["", "| step | needs GPU | status | s | note |", "|---|---|---|---|---|"]
    for s in doc["steps"]:
        out.append(f"| {s['step']} | {'yes' if s['needs_gpu'] else 'no'} | {s['status']} | "
                   f"{s['seconds']:.0f} | {s['note']} |")
    if doc["train_iteration"]:
        out += ["", f"Training iteration, width {probe.get('width', '?')}, {probe.get('train_size', '?')}, batch 1 "
                "(mean of the A/B and B/A runs; peak: device memory above idle, the larger of the two runs):", "",
                "| amp | lse-train ms | PyTorch eager ms | ratio | lse-train peak MiB | PyTorch peak MiB |",
                "|---|---|---|---|---|---|"]
        for t in doc["train_iteration"]:
            mib = lambda v: "-" if v is None else f"{v:.0f}"
            out.append(f"| {t['amp']} | {t['lse_train_ms']:.1f} | {t['pytorch_ms']:.1f} | {t['ratio']:.3f} | "
                       f"{mib(t['lse_train_peak_mib'])} | {mib(t['pytorch_peak_mib'])} |")
    out += ["", "Every figure, by step:", ""]
    for s in doc["steps"]:
        if s["results"]:
            figures = ", ".join(f"{k}={v}" for k, v in s["results"].items())
            out.append(f"- {s['step']}: {figures}")
    return "\n".join(out) + "\n"


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    steps_path, results = sys.argv[1], sys.argv[2]
    steps = [json.loads(line) for line in open(steps_path) if line.strip()]
    probe = next((s["results"] for s in steps if s["step"] == "probe"), {})
    bench = next((s["results"] for s in steps if s["step"] == "train-bench"), {})
    doc = {"dry_run": probe.get("dry") == 1.0, "rehearsal": probe.get("rehearsal") == 1.0, "steps": steps, "train_iteration": train_summary(bench)}
    write(os.path.join(results, "gpu-results.json"), json.dumps(doc, indent=1) + "\n")
    write(os.path.join(results, "gpu-results.md"), markdown(doc))


if __name__ == "__main__":
    main()
