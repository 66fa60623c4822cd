"""Tests of scripts/bench_adapt.py (standard library only):

    python3 -m unittest discover -s scripts/tests

Every expected number below is worked out by hand from the inputs written here, not
by calling the helper's own arithmetic.
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import bench_adapt  # noqa: E402

CLASSES = ["road", "sky"]


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def finished_run(out, name, miou):
    """A finished arm: run.json with its val mIoU (a fraction) and a model file."""
    d = os.path.join(out, name)
    write(os.path.join(d, "run.json"), {
        "evaluation": {"miou": miou,
                       "per_class": [{"class": c, "iou": miou} for c in CLASSES]},
        "rounds": [],
        "sessions": [{"started": 100.0, "ended": 160.0}],
    })
    open(os.path.join(d, "model.safetensors"), "w").close()


def captured(fn, *args):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args)
    return buf.getvalue()


class Choices(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.out = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_lr_choice_is_the_best_tuning_run(self):
        finished_run(self.out, "tune-lse-lr1e-6-s0", 0.48)
        finished_run(self.out, "tune-lse-lr1e-5-s0", 0.45)
        rec = json.loads(captured(bench_adapt.choose, self.out, "1e-6 1e-5"))
        self.assertEqual(rec["lr_name"], "1e-6")
        self.assertEqual(rec["lr"], 1e-6)

    def test_ties_go_to_the_simpler_variant_and_unfinished_runs_do_not_count(self):
        write(os.path.join(self.out, "tuning.json"), {"lr_name": "1e-6"})
        finished_run(self.out, "tune-lse-lr1e-6-s0", 0.47)
        finished_run(self.out, "tune-grid-s0", 0.47)
        write(os.path.join(self.out, "tune-nearest-s0", "run.json"), {"evaluation": {"miou": 0.9}})
        self.assertEqual(bench_adapt.best_of(self.out, ["reference", "grid", "nearest"]), "reference")

    def test_variant_flags(self):
        self.assertEqual(bench_adapt.variant_args("reference"), [])
        self.assertEqual(bench_adapt.variant_args("grid+ms"),
                         ["--window-placement", "grid", "--window-scale", "0.5,0.75"])
        with self.assertRaisesRegex(SystemExit, "unknown window variant part 'zoom'"):
            bench_adapt.variant_args("grid+zoom")

    def test_adopted_choices_are_copied_unchanged_and_marked(self):
        src = os.path.join(self.out, "from")
        dst = os.path.join(self.out, "to")
        os.makedirs(dst)
        write(os.path.join(src, "tuning.json"), {"lr": 1e-6, "tune_miou": {"1e-6": 0.5}})
        write(os.path.join(src, "choice.json"), {"variant": "grid", "flags": ["--window-placement", "grid"]})
        bench_adapt.adopt(src, dst, "source-camera")
        with open(os.path.join(dst, "tuning.json")) as f:
            self.assertEqual(json.load(f), {"lr": 1e-6, "tune_miou": {"1e-6": 0.5},
                                            "adopted_from": "source-camera",
                                            "adopted_runs": os.path.abspath(src)})
        with open(os.path.join(dst, "choice.json")) as f:
            self.assertEqual(json.load(f)["flags"], ["--window-placement", "grid"])

    def test_adopting_from_a_regime_without_choices_names_the_missing_file(self):
        with self.assertRaisesRegex(SystemExit, "no tuning.json in .*missing.*LSE_BENCH_REGIME=wide"):
            bench_adapt.adopt(os.path.join(self.out, "missing"), self.out, "wide")


class Report(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.out = os.path.join(self.tmp.name, "runs")
        os.makedirs(self.out)
        write(os.path.join(self.out, "source-only", "eval.json"),
              {"miou": 0.40, "per_class": [{"class": c, "iou": 0.4} for c in CLASSES]})
        for seed, (lse, st, ctl) in enumerate([(0.4663, 0.4722, 0.4625),
                                                (0.4642, 0.4716, 0.4625),
                                                (0.4663, 0.4713, 0.4625)]):
            finished_run(self.out, f"lse-chosen-s{seed}", lse)
            finished_run(self.out, f"self-training-s{seed}", st)
            finished_run(self.out, f"control-s{seed}", ctl)
        self.results = os.path.join(self.tmp.name, "results.md")
        bench_adapt.report(self.out, self.results)
        with open(self.results) as f:
            self.page = f.read()

    def tearDown(self):
        self.tmp.cleanup()

    def test_table_holds_the_arms_that_ran_and_names_the_others(self):
        self.assertIn("| LSE, window variant chosen on the tuning split | 3 | 46.56 | 0.12 | 46.42 | 46.63 | 60 |",
                      self.page)
        self.assertIn("| control: source training continued | 3 | 46.25 | 0.00 |", self.page)
        self.assertNotIn("| oracle", self.page)
        self.assertIn("Not run (yet) on this target: LSE without focal term; LSE with focal term; "
                      "oracle: fine-tuned on target-train labels.", self.page)
        self.assertTrue(os.path.isfile(os.path.join(self.tmp.name, "results.svg")))

    def test_adopted_choices_name_their_regime_in_the_command_that_regenerates_the_page(self):
        write(os.path.join(self.out, "tuning.json"),
              {"lr": 1e-6, "criterion": "c", "tune_miou": {"1e-6": 0.48}, "adopted_from": "source-camera"})
        write(os.path.join(self.out, "choice.json"),
              {"variant": "grid", "flags": ["--window-placement", "grid"], "tune_miou": {"grid": 0.48},
               "chosen_at": "2026-12-05T14:35:11Z", "adopted_from": "source-camera"})
        bench_adapt.report(self.out, self.results)
        with open(self.results) as f:
            page = f.read()
        self.assertIn('regenerate with `LSE_BENCH_CHOICE_FROM=source-camera '
                      'LSE_BENCH_ARMS="control self-training lse-chosen" scripts/bench-adapt.sh`', page)
        self.assertIn("## Choices: adopted from the `source-camera` tuning split", page)
        self.assertIn("- Window variant **grid** (--window-placement grid)", page)
        self.assertIn("| LSE, window variant chosen on the `source-camera` tuning split | 3 | 46.56 |", page)
        self.assertIn("## The goal: LSE, window variant chosen on the `source-camera` tuning split at least 2", page)

    def test_goal_pairs_seeds(self):
        # 46.63-47.22, 46.42-47.16, 46.63-47.13; mean -0.61, sd 0.12 (by hand)
        self.assertIn("- vs self-training: -0.61 mIoU (not met); per seed -0.59, -0.74, -0.50 "
                      "(mean -0.61, sd 0.12, not all positive)", self.page)
        # 46.56 - 46.25; per seed +0.38, +0.17, +0.38
        self.assertIn("- vs control: +0.31 mIoU (not met); per seed +0.38, +0.17, +0.38", self.page)
        self.assertIn("- vs source-only: +6.56 mIoU (met)", self.page)


if __name__ == "__main__":
    unittest.main()
