//! `lse_trainer::losses` and `lse_trainer::lse` against an independent computation:
//! `tests/py/lse_reference.py`, run by the project's venv PyTorch/numpy on inputs
//! generated here. The reference uses torch autograd for the losses and their
//! gradients, numpy loops over classes for entropy, scores and per-class min-max
//! normalisation, Python sorting for the ranking, the reference implementation's
//! per-pixel loop for the reliability mask, and `F.interpolate(align_corners=True)`
//! window by window for the generated examples.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use lse_test_support::{check_ok, python};
use lse_trainer::losses::{DEFAULT_FOCAL, source_loss, target_loss};
use lse_trainer::lse::{
    self, DegenerateGroups, Window, class_mean_normalized_entropy, class_scores, entropy, generate,
    iterations_per_round, normalized_entropy, random_windows, reliable_mask, select, thresholds,
};
use rand::SeedableRng;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

const N: i64 = 30;
const C: i64 = 5;
const H: i64 = 16;
const W: i64 = 20;
const K: usize = 4;
const EPOCHS: usize = 2;
const BATCH: usize = 3;
/// The fixtures below compare the `Drop` semantics with the numpy loops; the
/// reference's NaN semantics (`Keep`) have their own test.
const DROP: DegenerateGroups = DegenerateGroups::Drop;
const P: f64 = 0.75;
const SKIP: [bool; 5] = [false, false, true, false, false];
/// Thresholds at the edges of [0, 1], where the strict `H' < tau` matters.
const CUSTOM_TAUS: [Option<f64>; 5] = [Some(0.0), Some(1.0), None, Some(0.5), Some(0.0)];

#[derive(Debug, Deserialize)]
struct RefJson {
    scores: Vec<Vec<Option<f64>>>,
    class_means: Vec<Vec<Option<f64>>>,
    rankings: Vec<Vec<usize>>,
    kept: Vec<usize>,
    confident: Vec<usize>,
    boundary: Vec<Option<usize>>,
    thresholds: Vec<Option<f64>>,
    ignored_share: f64,
    iterations: usize,
}

/// The inputs and the reference's results, loaded from the fixture directory.
struct Fixture {
    logits: Tensor,
    labels: Tensor,
    probs: Tensor,
    images: Tensor,
    windows: Vec<Vec<Window>>,
    reference: Vec<(String, Tensor)>,
    json: &'static RefJson,
}

/// Written once per test binary; tensors are re-read by each test (tch tensors are
/// not `Sync`).
struct Prepared {
    dir: tempfile::TempDir,
    windows: Vec<Vec<Window>>,
    json: RefJson,
}

/// Random inputs drawn as one step with their seed (the tests of this file run in
/// parallel and libtorch's generator is global).
fn inputs() -> (Tensor, Tensor, Tensor, Tensor) {
    lse_trainer::seeding::with_seed(7, draw_inputs)
}

fn draw_inputs() -> (Tensor, Tensor, Tensor, Tensor) {
    let opts = (Kind::Float, Device::Cpu);
    let logits = Tensor::randn([2, C, 6, 7], opts) * 3.0;
    let labels = Tensor::randint(C, [2, 6, 7], (Kind::Int64, Device::Cpu));
    let ignore = Tensor::rand([2, 6, 7], opts).lt(0.3);
    let labels = labels.masked_fill(&ignore, 255);

    // Per-image temperature so the images differ in confidence.
    let temp = Tensor::rand([N, 1, 1, 1], opts) * 4.0 + 0.5;
    let z = Tensor::randn([N, C, H, W], opts) * temp;
    // Image 0: class 3 predicted at exactly one pixel, class 4 at five pixels with
    // identical probabilities (max == min), class 2 (skipped) predicted as usual.
    let _ = z.get(0).get(3).fill_(-20.0);
    let _ = z.get(0).get(3).get(0).get(0).fill_(20.0);
    let _ = z.get(0).get(4).fill_(-20.0);
    let same = Tensor::from_slice(&[0.5f32, 1.0, 0.0, -1.0, 6.0]).view([C, 1]);
    let mut row = z.get(0).select(1, 1).narrow(1, 0, 5);
    row.copy_(&same.expand([C, 5], false));
    let probs = z.softmax(1, Kind::Float);
    let images = Tensor::randn([N, 3, H, W], opts) * 50.0;
    (logits, labels, probs, images)
}

fn rust_selection(probs: &Tensor) -> lse::Selection {
    let scores: Vec<_> = (0..N).map(|i| class_scores(&probs.get(i))).collect();
    select(&scores, P, &SKIP)
}

fn prepared() -> &'static Prepared {
    static F: OnceLock<Prepared> = OnceLock::new();
    F.get_or_init(|| {
        let (logits, labels, probs, images) = inputs();
        let sel = rust_selection(&probs);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let windows: Vec<Vec<Window>> = sel
            .confident
            .iter()
            .map(|_| random_windows(&mut rng, H, W, K, lse::DEFAULT_WINDOW_SCALE))
            .collect();
        let wflat: Vec<i64> = windows
            .iter()
            .flatten()
            .flat_map(|w| [w.y, w.x, w.h, w.w])
            .collect();
        let wt = Tensor::from_slice(&wflat).view([windows.len() as i64, K as i64, 4]);

        let py = python();
        let dir = tempfile::tempdir().unwrap();
        Tensor::write_safetensors(
            &[
                ("logits", &logits),
                ("labels", &labels),
                ("probs", &probs),
                ("images", &images),
                ("windows", &wt),
            ],
            dir.path().join("inputs.safetensors"),
        )
        .unwrap();
        let cfg = serde_json::json!({
            "beta": DEFAULT_FOCAL.0, "gamma": DEFAULT_FOCAL.1, "p": P,
            "skip": SKIP, "k": K, "epochs": EPOCHS, "batch": BATCH, "custom_taus": CUSTOM_TAUS,
        });
        std::fs::write(dir.path().join("inputs.json"), cfg.to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/lse_reference.py");
        check_ok(
            Command::new(&py)
                .arg(&script)
                .arg(dir.path())
                .arg(dir.path()),
        );
        let json: RefJson =
            serde_json::from_slice(&std::fs::read(dir.path().join("ref.json")).unwrap()).unwrap();
        Prepared { dir, windows, json }
    })
}

fn fixture() -> Fixture {
    let p = prepared();
    let mut inputs = Tensor::read_safetensors(p.dir.path().join("inputs.safetensors")).unwrap();
    let mut take = |name: &str| {
        let i = inputs.iter().position(|(n, _)| n == name).unwrap();
        inputs.swap_remove(i).1
    };
    Fixture {
        logits: take("logits"),
        labels: take("labels"),
        probs: take("probs"),
        images: take("images"),
        windows: p.windows.clone(),
        reference: Tensor::read_safetensors(p.dir.path().join("ref.safetensors")).unwrap(),
        json: &p.json,
    }
}

impl Fixture {
    fn r(&self, name: &str) -> Tensor {
        self.reference
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("reference has no `{name}`"))
            .1
            .shallow_clone()
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn assert_close(name: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{name}: max |diff| = {d:e} > {tol:e}");
}

fn assert_opt_close(name: &str, a: &[Option<f64>], b: &[Option<f64>], tol: f64) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        match (x, y) {
            (Some(x), Some(y)) => assert!((x - y).abs() <= tol, "{name}[{i}]: {x} vs {y}"),
            (None, None) => {}
            _ => panic!("{name}[{i}]: {x:?} vs {y:?}"),
        }
    }
}

fn loss_and_grad(f: impl Fn(&Tensor) -> Tensor, logits: &Tensor) -> (Tensor, Tensor) {
    let x = logits.detach().copy().set_requires_grad(true);
    let l = f(&x);
    l.backward();
    (l.detach(), x.grad())
}

#[test]
fn source_cross_entropy_with_ignore_and_gradient() {
    let f = fixture();
    let (l, g) = loss_and_grad(|x| source_loss(x, &f.labels), &f.logits);
    assert_close("source loss", &l.reshape([1]), &f.r("source_loss"), 1e-5);
    assert_close("source grad", &g, &f.r("source_grad"), 1e-6);
    // Ignored pixels receive no gradient.
    let ign = f.labels.eq(255).unsqueeze(1).expand_as(&g);
    assert_eq!(
        g.masked_select(&ign)
            .abs()
            .sum(Kind::Double)
            .double_value(&[]),
        0.0
    );
}

#[test]
fn target_loss_focal_and_its_gradient() {
    let f = fixture();
    let (l, g) = loss_and_grad(|x| target_loss(x, &f.labels, None), &f.logits);
    assert_close(
        "target loss",
        &l.reshape([1]),
        &f.r("target_plain_loss"),
        1e-5,
    );
    assert_close("target grad", &g, &f.r("target_plain_grad"), 1e-6);
    let (l, g) = loss_and_grad(
        |x| target_loss(x, &f.labels, Some(DEFAULT_FOCAL)),
        &f.logits,
    );
    assert_close(
        "focal loss",
        &l.reshape([1]),
        &f.r("target_focal_loss"),
        1e-5,
    );
    assert_close("focal grad", &g, &f.r("target_focal_grad"), 1e-6);
    // The focal term is not negligible here: it changes the gradient.
    let plain = f.r("target_plain_grad");
    assert!(max_abs_diff(&g, &plain) > 1e-4, "focal term has no effect");
}

#[test]
fn entropy_and_per_class_normalisation() {
    let f = fixture();
    let ours: Vec<Tensor> = (0..N).map(|i| entropy(&f.probs.get(i))).collect();
    assert_close("entropy", &Tensor::stack(&ours, 0), &f.r("entropy"), 1e-5);
    let ours: Vec<Tensor> = (0..N)
        .map(|i| normalized_entropy(&f.probs.get(i), DROP))
        .collect();
    let ours = Tensor::stack(&ours, 0);
    assert_close(
        "normalised entropy",
        &ours,
        &f.r("normalized_entropy"),
        1e-5,
    );
    // The planted degenerate groups of image 0: single pixel and max == min are 0.
    let img0 = ours.get(0);
    assert_eq!(
        img0.get(0).get(0).double_value(&[]),
        0.0,
        "single-pixel class"
    );
    let row = img0.get(1).narrow(0, 0, 5);
    assert_eq!(
        row.abs().sum(Kind::Double).double_value(&[]),
        0.0,
        "max == min"
    );
    let a = f.probs.get(0).argmax(0, false);
    assert_eq!(a.eq(3).sum(Kind::Int64).int64_value(&[]), 1);
    assert_eq!(a.eq(4).sum(Kind::Int64).int64_value(&[]), 5);
    // Values stay in [0, 1].
    assert!(ours.min().double_value(&[]) >= 0.0 && ours.max().double_value(&[]) <= 1.0);
}

#[test]
fn class_scores_ranking_and_selection() {
    let f = fixture();
    let j = f.json;
    for i in 0..N {
        assert_opt_close(
            "scores",
            &class_scores(&f.probs.get(i)),
            &j.scores[i as usize],
            1e-6,
        );
    }
    let sel = rust_selection(&f.probs);
    assert_eq!(sel.rankings, j.rankings);
    assert_eq!(sel.kept, j.kept);
    assert_eq!(sel.confident, j.confident);
    assert_eq!(sel.boundary, j.boundary);
    // The case is not trivial: several kept per class, the skipped class is empty.
    assert!(
        sel.kept.iter().filter(|&&k| k >= 2).count() >= 3,
        "{:?}",
        sel.kept
    );
    assert!(sel.rankings[2].is_empty() && sel.kept[2] == 0 && sel.boundary[2].is_none());
    assert!(sel.confident.len() < N as usize);
    assert_eq!(
        iterations_per_round(sel.confident.len(), K, EPOCHS, BATCH),
        j.iterations
    );
}

#[test]
fn boundary_thresholds() {
    let f = fixture();
    let j = f.json;
    // Per-image class means of H' (including image 0's degenerate groups).
    for i in 0..N {
        let ours = class_mean_normalized_entropy(&f.probs.get(i), DROP);
        assert_opt_close("class means", &ours, &j.class_means[i as usize], 1e-5);
    }
    let sel = rust_selection(&f.probs);
    let bp: Vec<Option<Tensor>> = sel
        .boundary
        .iter()
        .map(|b| b.map(|i| f.probs.get(i as i64)))
        .collect();
    let taus = thresholds(&bp, DROP);
    assert_opt_close("thresholds", &taus, &j.thresholds, 1e-5);
    assert!(taus[2].is_none(), "skipped class has no threshold");
    for t in taus.iter().flatten() {
        assert!((0.0..=1.0).contains(t));
    }
}

#[test]
fn reliability_mask_matches_per_pixel_loop() {
    let f = fixture();
    let j = f.json;
    let masks = f.r("masks");
    let mut kept = 0.0;
    let mut skipped_pixels = 0;
    for (n, &i) in j.confident.iter().enumerate() {
        let p = f.probs.get(i as i64);
        let ours = reliable_mask(&p, &j.thresholds, DROP);
        let theirs = masks.get(n as i64);
        // A mismatch is only allowed where H' is within 1e-5 of the threshold.
        let hn = normalized_entropy(&p, DROP).to_kind(Kind::Double);
        let a = p.argmax(0, false);
        let tau: Vec<f64> = j.thresholds.iter().map(|t| t.unwrap_or(-10.0)).collect();
        let tau_px = Tensor::from_slice(&tau)
            .index_select(0, &a.flatten(0, -1))
            .view_as(&hn);
        let near = (hn - tau_px).abs().lt(1e-5);
        let bad = ours.ne_tensor(&theirs).logical_and(&near.logical_not());
        assert_eq!(
            bad.sum(Kind::Int64).int64_value(&[]),
            0,
            "mask of image {i}"
        );
        kept += ours.sum(Kind::Double).double_value(&[]);
        // Pixels of the skipped class (no threshold) are never reliable.
        let skipped = a.eq(2);
        skipped_pixels += skipped.sum(Kind::Int64).int64_value(&[]);
        assert_eq!(
            ours.masked_select(&skipped)
                .sum(Kind::Double)
                .double_value(&[]),
            0.0
        );
    }
    let total = (j.confident.len() as i64 * H * W) as f64;
    assert!(
        kept > 0.1 * total && kept < 0.9 * total,
        "kept {kept} of {total}"
    );
    assert!(skipped_pixels > 0);
    // Thresholds 0 and 1: H' = 0 and H' = 1 pixels are unreliable (strict <).
    let custom = f.r("masks_custom");
    let ours: Vec<Tensor> = (0..N)
        .map(|i| reliable_mask(&f.probs.get(i), &CUSTOM_TAUS, DROP))
        .collect();
    let ours = Tensor::stack(&ours, 0);
    assert!(
        ours.equal(&custom),
        "masks with thresholds 0 / 1 / None differ"
    );
    let a = f.probs.argmax(1, false);
    for (c, t) in CUSTOM_TAUS.iter().enumerate() {
        let n = ours
            .masked_select(&a.eq(c as i64))
            .sum(Kind::Double)
            .double_value(&[]);
        if *t == Some(0.0) || t.is_none() {
            assert_eq!(n, 0.0, "class {c} with threshold {t:?}");
        } else {
            assert!(n > 0.0, "class {c} with threshold {t:?}");
        }
    }
}

/// The reference's NaN semantics: a degenerate group (image 0's single-pixel class 3
/// and its max == min class 4) normalises to NaN, a threshold taken from it is NaN,
/// and the reference's per-pixel loop (`ignore iff H' >= tau`) keeps such pixels.
#[test]
fn degenerate_groups_keep_as_the_reference() {
    let f = fixture();
    let keep = DegenerateGroups::Keep;
    let ours: Vec<Tensor> = (0..N)
        .map(|i| normalized_entropy(&f.probs.get(i), keep))
        .collect();
    let ours = Tensor::stack(&ours, 0).to_kind(Kind::Double);
    let theirs = f.r("keep_normalized_entropy");
    assert!(
        ours.isnan().equal(&theirs.isnan()),
        "NaN positions differ from the reference's normalisation"
    );
    let finite = ours.isnan().logical_not();
    let d = (ours.masked_select(&finite) - theirs.masked_select(&finite))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "normalised entropy differs by {d}");
    assert!(
        ours.get(0).isnan().any().int64_value(&[]) == 1,
        "image 0 has degenerate groups"
    );
    // Image 0 as every class's boundary image (the skipped class has none).
    let bp: Vec<Option<Tensor>> = (0..C as usize)
        .map(|c| (!SKIP[c]).then(|| f.probs.get(0)))
        .collect();
    let taus = thresholds(&bp, keep);
    let ref_taus: Vec<f64> = Vec::try_from(f.r("keep_taus")).unwrap();
    let ref_has: Vec<bool> = Vec::try_from(f.r("keep_has_tau")).unwrap();
    for c in 0..C as usize {
        match (taus[c], ref_has[c]) {
            (None, false) => {}
            (Some(t), true) if t.is_nan() => assert!(ref_taus[c].is_nan(), "class {c}"),
            (Some(t), true) => assert!((t - ref_taus[c]).abs() < 1e-5, "class {c}: {t}"),
            (t, h) => panic!("class {c}: ours {t:?}, reference has a threshold: {h}"),
        }
    }
    assert!(taus[3].unwrap().is_nan() && taus[4].unwrap().is_nan());
    let masks: Vec<Tensor> = (0..N)
        .map(|i| reliable_mask(&f.probs.get(i), &taus, keep))
        .collect();
    let masks = Tensor::stack(&masks, 0);
    let theirs = f.r("keep_masks");
    // A mismatch is only allowed where H' is within 1e-5 of a (finite) threshold.
    let a = f.probs.argmax(1, false);
    let tau_px = Tensor::from_slice(&ref_taus)
        .index_select(0, &a.flatten(0, -1))
        .view_as(&ours);
    let near = (&ours - tau_px).abs().lt(1e-5);
    let bad = masks
        .ne_tensor(&theirs)
        .logical_and(&near.logical_not())
        .sum(Kind::Int64)
        .int64_value(&[]);
    assert_eq!(bad, 0, "{bad} mask pixels differ from the reference's loop");
    // Every pixel predicted 3 or 4 (NaN thresholds) is kept in every image.
    for c in [3, 4] {
        let sel = a.eq(c);
        assert_eq!(
            masks
                .masked_select(&sel)
                .sum(Kind::Double)
                .double_value(&[]),
            sel.sum(Kind::Double).double_value(&[]),
            "class {c} with a NaN threshold is kept"
        );
    }
}

#[test]
fn generated_examples_match_interpolate() {
    let f = fixture();
    let j = f.json;
    let sel = rust_selection(&f.probs);
    assert_eq!(sel.confident, j.confident);
    let mut imgs = Vec::new();
    let mut labels = Vec::new();
    let mut share = 0.0;
    for (n, &i) in sel.confident.iter().enumerate() {
        let p = f.probs.get(i as i64);
        let m = reliable_mask(&p, &j.thresholds, DROP);
        let g = generate(&f.images.get(i as i64), &p, &m, &f.windows[n]);
        assert_eq!(g.examples.len(), K);
        assert_eq!(g.images.size(), [K as i64, 3, H, W]);
        assert_eq!(g.labels.kind(), Kind::Int64);
        share += g.ignored_share;
        imgs.push(g.images);
        labels.push(g.labels);
    }
    let imgs = Tensor::cat(&imgs, 0);
    let labels = Tensor::cat(&labels, 0);
    assert_close("generated images", &imgs, &f.r("gen_images"), 1e-4);
    // Labels equal, except where the two best upsampled probabilities tie within 1e-6.
    let theirs = f.r("gen_labels");
    let top2 = f.r("gen_probs").topk(2, 1, true, true).0;
    let tie = (top2.select(1, 0) - top2.select(1, 1)).lt(1e-6);
    let ignore_ours = labels.eq(255);
    let ignore_theirs = theirs.eq(255);
    assert!(ignore_ours.equal(&ignore_theirs), "ignore sets differ");
    let bad = labels.ne_tensor(&theirs).logical_and(&tie.logical_not());
    assert_eq!(
        bad.sum(Kind::Int64).int64_value(&[]),
        0,
        "pseudo-labels differ"
    );
    let share = share / sel.confident.len() as f64;
    assert!(
        (share - j.ignored_share).abs() < 1e-12,
        "{share} vs {}",
        j.ignored_share
    );
    assert!(share > 0.05 && share < 0.95, "ignored share {share}");
}
