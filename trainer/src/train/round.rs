//! Preparing one adaptation round (docs/method.md, "One adaptation round"): rank the
//! target set, take the thresholds from the boundary images, and generate the
//! scale-invariant examples. Beside the round itself, and never feeding back into
//! it: the pseudo-label diagnostics ([`crate::diagnostics`]) when the target split
//! has labels, the pictures of a few confident images for the run report, and (for
//! the one-round test) a dump of every intermediate result.

use std::path::Path;

use image::GrayImage;
use lse_runtime::{imageio, palette};

use super::*;
use crate::diagnostics::{
    Mean, Premise, PseudoLabelCounts, WindowCounts, mean_normalized_entropy, pixel_accuracy,
};
use crate::run::RoundSample;

/// Per image: its class scores ([`lse::class_scores`]).
type Scores = Vec<Vec<Option<f64>>>;

/// Per image (diagnostics): the `(correct, labelled)` pixels of its prediction.
type ImageAccuracy = Vec<(u64, u64)>;

/// What the diagnostics accumulate while a round generates its examples: the
/// full-image pseudo-labels, the premise's entropies (full images, windows) and the
/// examples actually trained on.
struct GenerateDiagnostics {
    counts: PseudoLabelCounts,
    premise: (Mean, Mean),
    windows: WindowCounts,
}

/// The values of a tensor as bytes on the CPU.
fn to_u8(t: &Tensor) -> Vec<u8> {
    Vec::try_from(
        t.to_kind(Kind::Uint8)
            .to_device(Device::Cpu)
            .contiguous()
            .flatten(0, -1),
    )
    .expect("u8 tensor")
}

impl Trainer {
    /// Ranks the target set, computes thresholds and generates the round's examples.
    pub(super) fn prepare_round(&mut self, r: usize) -> anyhow::Result<RoundExamples> {
        let target = self.target.clone().expect("adapt has a target");
        let p = self.cfg.p_schedule[r];
        let diag_on = self.cfg.diagnostics && target.has_labels();
        let mut stats = RoundStats {
            round: r + 1,
            p,
            target_images: target.len(),
            ..Default::default()
        };
        // Diagnostic time inside the rank and generate phases, taken out of theirs.
        let (mut rank_diag_seconds, mut gen_diag_seconds) = (0.0, 0.0);
        // 1. Rank, 2. thresholds from the boundary images.
        let (scores, image_diags, sel) =
            self.rank_and_select(r, &target, p, diag_on, &mut stats, &mut rank_diag_seconds)?;
        let thresholds = self.round_thresholds(&target, &sel, &mut stats)?;

        // 3. Generate.
        let t2 = Instant::now();
        let classes = self.model.meta.config.classes as usize;
        let [tw, th] = self.cfg.target_size;
        let mut diag = diag_on.then(|| GenerateDiagnostics {
            counts: PseudoLabelCounts::new(classes),
            premise: (Mean::default(), Mean::default()),
            windows: WindowCounts::new(classes, th as usize, tw as usize),
        });
        let ex = self.generate_examples(
            r,
            &target,
            &sel.confident,
            &thresholds,
            &mut stats,
            diag.as_mut(),
            &mut gen_diag_seconds,
        )?;
        stats.examples = sel.confident.len() * self.cfg.patches;
        stats.seconds.insert(
            Phase::Generate,
            (t2.elapsed().as_secs_f64() - gen_diag_seconds).max(0.0),
        );
        let full = self.round_iterations(&sel, &mut stats);

        if let Some(diag) = diag {
            let t3 = Instant::now();
            self.round_diagnostics(&sel, &image_diags, diag, &mut stats)?;
            let seconds = rank_diag_seconds + gen_diag_seconds + t3.elapsed().as_secs_f64();
            stats.seconds.insert(Phase::Diagnostics, seconds);
        }
        for ph in Phase::PREPARATION {
            if let Some(&s) = stats.seconds.get(&ph) {
                self.add_phase_time(ph, s);
            }
        }
        if let Some(dir) = self.opts.dump_dir.clone() {
            dump_selection(&dir, r, &scores, &sel, &thresholds, &ex, full)?;
        }
        tracing::info!(
            round = r + 1,
            p,
            confident = stats.confident,
            examples = stats.examples,
            iterations = stats.iterations,
            ignored_share = stats.ignored_share,
            "round prepared"
        );
        self.state.current = Some(stats);
        Ok(ex)
    }

    /// Step 1: ranks the target set and selects the confident images (an error when
    /// there is none); with diagnostics also each image's `(correct, labelled)` pixels.
    fn rank_and_select(
        &self,
        r: usize,
        target: &Arc<Dataset>,
        p: f64,
        diag_on: bool,
        stats: &mut RoundStats,
        diag_seconds: &mut f64,
    ) -> anyhow::Result<(Scores, ImageAccuracy, lse::Selection)> {
        let t0 = Instant::now();
        let (scores, image_diags) = self.rank(target, diag_on, diag_seconds)?;
        let classes = self.model.meta.config.classes as usize;
        let skip = lse::skip_mask(classes, &skipped_classes(self.source.kind()));
        let sel = lse::select(&scores, p, &skip);
        stats.confident = sel.confident.len();
        stats.kept_per_class = sel.kept.clone();
        stats
            .seconds
            .insert(Phase::Rank, t0.elapsed().as_secs_f64());
        if sel.confident.is_empty() {
            anyhow::bail!(
                "round {}: no confident target image (p = {p}, {} target images): the model predicts \
                 too few images per class for floor(N_c * p / C) >= 1; use more target images or a larger p",
                r + 1,
                target.len()
            );
        }
        Ok((scores, image_diags, sel))
    }

    /// Step 2: the class thresholds from the boundary images (each predicted once).
    fn round_thresholds(
        &self,
        target: &Arc<Dataset>,
        sel: &lse::Selection,
        stats: &mut RoundStats,
    ) -> anyhow::Result<Vec<Option<f64>>> {
        let t1 = Instant::now();
        let classes = self.model.meta.config.classes as usize;
        let thresholds = self.boundary_thresholds(target, sel)?;
        stats.degenerate_thresholds = (0..classes)
            .filter(|&c| thresholds[c].is_some_and(f64::is_nan))
            .collect();
        stats.thresholds = thresholds.clone();
        stats
            .seconds
            .insert(Phase::Thresholds, t1.elapsed().as_secs_f64());
        Ok(thresholds)
    }

    /// The round's iterations (every example `epochs_per_round` times, capped by
    /// `max_round_iterations` when set) into `stats`; returns the uncapped count.
    fn round_iterations(&self, sel: &lse::Selection, stats: &mut RoundStats) -> u64 {
        let full = lse::iterations_per_round(
            sel.confident.len(),
            self.cfg.patches,
            self.cfg.epochs_per_round,
            self.cfg.batch_size,
        ) as u64;
        stats.iterations = if self.cfg.max_round_iterations > 0 {
            full.min(self.cfg.max_round_iterations)
        } else {
            full
        };
        full
    }

    /// The round's pseudo-label diagnostics: the confident images' `counts` plus the
    /// other images' accuracy, and the premise's entropies (target full images and
    /// windows, and the source).
    fn round_diagnostics(
        &self,
        sel: &lse::Selection,
        image_diags: &[(u64, u64)],
        diag: GenerateDiagnostics,
        stats: &mut RoundStats,
    ) -> anyhow::Result<()> {
        let GenerateDiagnostics {
            mut counts,
            premise,
            windows,
        } = diag;
        for (i, &(correct, labelled)) in image_diags.iter().enumerate() {
            if sel.confident.binary_search(&i).is_err() {
                counts.add_other_counts(correct, labelled);
            }
        }
        let source = self.source_entropy()?;
        let mut summary = counts.summary(Premise {
            target_full: premise.0.get(),
            target_windows: premise.1.get(),
            source,
        });
        summary.window = Some(windows.summary());
        stats.diagnostics = Some(summary);
        Ok(())
    }

    /// The class scores of every target image (eval mode), and with diagnostics the
    /// `(correct, labelled)` pixels of each image's prediction.
    fn rank(
        &self,
        target: &Arc<Dataset>,
        diag_on: bool,
        diag_seconds: &mut f64,
    ) -> anyhow::Result<(Scores, ImageAccuracy)> {
        let n = target.len();
        let size = self.cfg.target_size;
        let classes = self.model.meta.config.classes as usize;
        let pb = bar(n as u64, "rank", "images", self.opts.quiet);
        let mut stream =
            data::image_stream(target.clone(), (0..n).collect(), size, self.cfg.mean_bgr);
        let mut scores = Vec::with_capacity(n);
        let mut diags = Vec::new();
        let mut received = 0;
        while received < n {
            let chunk = self.cfg.rank_batch.min(n - received);
            let (indices, images): (Vec<usize>, Vec<Tensor>) = (0..chunk)
                .map(|_| stream.recv())
                .collect::<Result<_, _>>()?;
            received += chunk;
            let probs = self.model.probs_batch(&Tensor::stack(&images, 0));
            for (k, &i) in indices.iter().enumerate() {
                let probs = probs.get(k as i64);
                scores.push(lse::class_scores(&probs));
                if diag_on {
                    let t = Instant::now();
                    let truth = data::label_at(target, i, size)?.expect("labels checked");
                    let pred = to_u8(&probs.argmax(0, false));
                    diags.push(pixel_accuracy(&pred, truth.as_raw(), classes));
                    *diag_seconds += t.elapsed().as_secs_f64();
                }
                pb.inc(1);
            }
        }
        pb.finish_and_clear();
        Ok((scores, diags))
    }

    /// The class thresholds of a selection (each boundary image predicted once).
    fn boundary_thresholds(
        &self,
        target: &Arc<Dataset>,
        sel: &lse::Selection,
    ) -> anyhow::Result<Vec<Option<f64>>> {
        let mut uniq: Vec<usize> = sel.boundary.iter().flatten().copied().collect();
        uniq.sort_unstable();
        uniq.dedup();
        let pb = bar(uniq.len() as u64, "thresh", "images", self.opts.quiet);
        let mut by_image: HashMap<usize, Tensor> = HashMap::new();
        let mut stream = data::image_stream(
            target.clone(),
            uniq.clone(),
            self.cfg.target_size,
            self.cfg.mean_bgr,
        );
        for _ in 0..uniq.len() {
            let (i, img) = stream.recv()?;
            by_image.insert(i, self.model.probs(&img));
            pb.inc(1);
        }
        pb.finish_and_clear();
        let boundary_probs: Vec<Option<Tensor>> = sel
            .boundary
            .iter()
            .map(|b| b.map(|i| by_image[&i].shallow_clone()))
            .collect();
        Ok(lse::thresholds(&boundary_probs, self.cfg.degenerate_groups))
    }

    /// Masks, windows and pseudo-labels of the confident images; with diagnostics,
    /// their pixel counts and the premise's entropies; pictures of the first
    /// `report_samples` images.
    #[allow(clippy::too_many_arguments)]
    fn generate_examples(
        &self,
        r: usize,
        target: &Arc<Dataset>,
        confident: &[usize],
        thresholds: &[Option<f64>],
        stats: &mut RoundStats,
        mut diag: Option<&mut GenerateDiagnostics>,
        diag_seconds: &mut f64,
    ) -> anyhow::Result<RoundExamples> {
        let size = self.cfg.target_size;
        let mut rng = ChaCha8Rng::seed_from_u64(data::mix_seed(&[self.cfg.seed, 2, r as u64]));
        let pb = bar(
            confident.len() as u64,
            "generate",
            "images",
            self.opts.quiet,
        );
        let mut stream =
            data::image_stream(target.clone(), confident.to_vec(), size, self.cfg.mean_bgr);
        let mut ex = RoundExamples::default();
        let mut ignored = 0.0;
        for j in 0..confident.len() {
            let (i, img) = stream.recv()?;
            let img = img.to_device(self.model.device);
            let probs = self.model.probs(&img);
            let mask = lse::reliable_mask(&probs, thresholds, self.cfg.degenerate_groups);
            let (h, w) = (probs.size()[1], probs.size()[2]);
            let windows = lse::place_windows(
                &mut rng,
                h,
                w,
                self.cfg.patches,
                &self.cfg.window_scales,
                self.cfg.window_placement,
            );
            let g = tch::no_grad(|| {
                lse::generate_with(&img, &probs, &mask, &windows, self.cfg.window_mask)
            });
            ignored += g.ignored_share * windows.len() as f64;
            let t = Instant::now();
            let truth = match diag.as_mut() {
                Some(d) => {
                    let truth = data::label_at(target, i, size)?.expect("labels checked");
                    let pred = to_u8(&probs.argmax(0, false));
                    let kept: Vec<bool> = to_u8(&mask).iter().map(|&m| m != 0).collect();
                    d.counts.add_confident(&pred, &kept, truth.as_raw());
                    d.premise.0.add(mean_normalized_entropy(&probs));
                    for probs in window_probs(&self.model, &g, self.cfg.rank_batch) {
                        d.premise.1.add(mean_normalized_entropy(&probs));
                    }
                    add_trained_windows(&mut d.windows, &truth, &windows, &g);
                    Some(truth)
                }
                None => None,
            };
            if j < self.cfg.report_samples {
                let sample = self.save_sample(r, i, &img, &probs, &mask, &windows, &g, truth)?;
                stats.samples.push(sample);
            }
            *diag_seconds += t.elapsed().as_secs_f64();
            // Only the windows and the u8 labels are kept: example images are rebuilt
            // from the target image at training time (lse::window_image).
            ex.sources.push(i);
            ex.windows.push(windows);
            ex.labels
                .push(g.labels.to_kind(Kind::Uint8).to_device(Device::Cpu));
            pb.inc(1);
        }
        pb.finish_and_clear();
        stats.ignored_share = ignored / (confident.len() * self.cfg.patches).max(1) as f64;
        Ok(ex)
    }

    /// Mean normalised entropy of the model on the first source images (the premise's
    /// reference point: the domain it was trained on).
    fn source_entropy(&self) -> anyhow::Result<Option<f64>> {
        crate::premise::source_entropy(
            &self.model,
            &self.source,
            self.cfg.target_size,
            self.cfg.mean_bgr,
        )
    }

    /// Writes the pictures of one confident image for the report: the image, its
    /// masked pseudo-labels, the ground truth (when known) and each window's example
    /// image and pseudo-label.
    #[allow(clippy::too_many_arguments)]
    fn save_sample(
        &self,
        r: usize,
        index: usize,
        img: &Tensor,
        probs: &Tensor,
        mask: &Tensor,
        windows: &[lse::Window],
        g: &lse::Generated,
        truth: Option<GrayImage>,
    ) -> anyhow::Result<RoundSample> {
        let dir = self.run.samples_dir(r + 1);
        std::fs::create_dir_all(&dir)?;
        let mean = self.cfg.mean_bgr;
        let files = crate::report::SampleFiles::new(index, windows.len());
        let write_rgb = |name: &str, im: &image::RgbImage| -> anyhow::Result<()> {
            Ok(imageio::write_rgb_png(&dir.join(name), im)?)
        };
        write_rgb(
            &files.image,
            &data::tensor_to_rgb(&img.to_device(Device::Cpu), mean),
        )?;
        let pseudo = probs
            .argmax(0, false)
            .masked_fill(&mask.eq(0.0), crate::losses::IGNORE_LABEL);
        write_rgb(
            &files.pseudo,
            &palette::colorize(&data::tensor_to_gray(&pseudo.to_device(Device::Cpu))),
        )?;
        if let Some(t) = &truth {
            write_rgb(&files.truth, &palette::colorize(t))?;
        }
        for (k, (wi, wl)) in files.windows.iter().enumerate() {
            let (im, lb) = &g.examples[k];
            write_rgb(wi, &data::tensor_to_rgb(&im.to_device(Device::Cpu), mean))?;
            write_rgb(
                wl,
                &palette::colorize(&data::tensor_to_gray(&lb.to_device(Device::Cpu))),
            )?;
        }
        Ok(RoundSample {
            image: index,
            key: self
                .target
                .as_ref()
                .map(|t| t.samples()[index].key.clone())
                .unwrap_or_default(),
            windows: windows.to_vec(),
            truth: truth.is_some(),
        })
    }
}

/// The model's probabilities on each example image of `g`, `batch` images a pass.
fn window_probs(model: &Model, g: &lse::Generated, batch: usize) -> Vec<Tensor> {
    g.images
        .split(batch as i64, 0)
        .iter()
        .flat_map(|chunk| {
            let probs = model.probs_batch(chunk);
            (0..chunk.size()[0]).map(move |k| probs.get(k))
        })
        .collect()
}

/// Adds the examples of one image, as trained on, to the window-level counts: each
/// example's pseudo-labels against its window's ground truth (nearest neighbour, as
/// labels are carried), and the image positions its pixels come from.
fn add_trained_windows(
    counts: &mut WindowCounts,
    truth: &GrayImage,
    windows: &[lse::Window],
    g: &lse::Generated,
) {
    let (h, w) = (truth.height() as i64, truth.width() as i64);
    let truth = Tensor::from_slice(truth.as_raw()).view([h, w]);
    for (k, win) in windows.iter().enumerate() {
        let window_truth = to_u8(&lse::window_nearest(&truth, win, h, w));
        let (rows, cols) = lse::window_sources(win, h, w);
        counts.add_window(&to_u8(&g.labels.get(k as i64)), &window_truth, &rows, &cols);
    }
}

/// The round's intermediate results for the one-round test (`--dump-rounds DIR`):
/// `DIR/round-NN-prepare.safetensors`.
fn dump_selection(
    dir: &Path,
    r: usize,
    scores: &[Vec<Option<f64>>],
    sel: &lse::Selection,
    thresholds: &[Option<f64>],
    ex: &RoundExamples,
    iterations: u64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let c = sel.classes;
    let flat_scores: Vec<f64> = scores
        .iter()
        .flat_map(|s| s.iter().map(|v| v.unwrap_or(f64::NAN)))
        .collect();
    let mut named: Vec<(String, Tensor)> = vec![
        (
            "scores".into(),
            Tensor::from_slice(&flat_scores).view([scores.len() as i64, c as i64]),
        ),
        (
            "kept".into(),
            Tensor::from_slice(&sel.kept.iter().map(|&k| k as i64).collect::<Vec<_>>()),
        ),
        (
            "confident".into(),
            Tensor::from_slice(&sel.confident.iter().map(|&k| k as i64).collect::<Vec<_>>()),
        ),
        (
            "boundary".into(),
            Tensor::from_slice(
                &sel.boundary
                    .iter()
                    .map(|b| b.map_or(-1, |i| i as i64))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "thresholds".into(),
            Tensor::from_slice(
                &thresholds
                    .iter()
                    .map(|t| t.unwrap_or(f64::NAN))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "has_threshold".into(),
            Tensor::from_slice(
                &thresholds
                    .iter()
                    .map(|t| i64::from(t.is_some()))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "iterations".into(),
            Tensor::from_slice(&[iterations as i64]),
        ),
    ];
    for (k, rk) in sel.rankings.iter().enumerate() {
        let v: Vec<i64> = rk.iter().map(|&i| i as i64).collect();
        named.push((format!("ranking.{k:02}"), Tensor::from_slice(&v)));
    }
    named.push(("windows".into(), ex.windows_tensor()));
    named.push(("labels".into(), Tensor::stack(&ex.labels, 0)));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(
        &refs,
        dir.join(format!("round-{:02}-prepare.safetensors", r + 1)),
    )?;
    Ok(())
}
