//! Batch labelling of folder trees (`lse label`).
//!
//! Every image under the input folder (PNG or JPEG, found recursively, sorted) gets
//! one single-channel PNG at the mirrored relative path under the output folder, with
//! the input's file name (extension `.png`), so that the official Cityscapes
//! evaluation (and `lse eval`) finds it by its `<city>_<seq>_<frame>` prefix. It holds
//! Cityscapes label ids by default, train ids with [`OutputIds::Train`]. Colour maps
//! and overlays go to separate trees beside the output folder (`<out>_color`,
//! `<out>_overlay`), so the results tree stays evaluable.
//!
//! - Prediction follows [`crate::predict`]: the model's training size, class
//!   probabilities upsampled bilinearly to the image's size, arg-max
//!   ([`Upsample::Labels`] is the fast variant).
//! - Resumable: an image whose output exists and decodes as a single-channel PNG of the
//!   image's size is skipped (unless `overwrite`); outputs are written atomically.
//! - Failures (unreadable image, write error, failed inference) are collected and
//!   returned in the summary; the other images go on.
//! - Sharding: part `K` of `N` (1-based) takes every N-th image of the sorted list,
//!   starting with the K-th, so `N` jobs together label the tree exactly once.
//! - Pipelined, with bounded memory: decoder threads read, decode and resize images
//!   into a bounded channel while the calling thread runs batches through the one
//!   session; a writer thread upsamples, encodes and writes the previous batch
//!   meanwhile (one batch in flight). The summary says how long each stage took
//!   ([`StageSeconds`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use image::{GrayImage, RgbImage};
use ndarray::Axis;
use rayon::prelude::*;
use serde::Serialize;

use crate::datasets::{self, DatasetError};
use crate::engine::{Engine, Provider};
use crate::imageio::{self, ImageError};
use crate::palette;
use crate::predict::{self, Upsample};

/// Which ids the output PNGs hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputIds {
    /// Cityscapes label ids (the official results format; ignore written as 0).
    #[default]
    Label,
    /// Train ids 0..C-1.
    Train,
}

crate::choice!(OutputIds, "output ids" {
    Label => "label", "Cityscapes label ids (the official results format; ignore written as 0)";
    Train => "train", "train ids 0..C-1";
});

/// A part of a tree: `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected K/N with 1 <= K <= N, e.g. 1/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: usize = k.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || k == 0 || k > n {
            return Err(bad());
        }
        Ok(Self { index: k, count: n })
    }
}

impl Shard {
    /// Whether the `i`-th item (0-based) of the sorted list belongs to this shard.
    pub fn contains(self, i: usize) -> bool {
        i % self.count == self.index - 1
    }
}

/// What and how to label.
#[derive(Debug, Clone, Serialize)]
pub struct LabelSettings {
    pub input: PathBuf,
    pub out: PathBuf,
    pub ids: OutputIds,
    /// Also write colour maps to [`LabelSettings::color_dir`].
    pub color: bool,
    /// Also write overlays to [`LabelSettings::overlay_dir`].
    pub overlay: bool,
    /// Also write confidence and entropy maps ([`crate::predict::confidence_entropy`])
    /// to [`LabelSettings::confidence_dir`] and [`LabelSettings::entropy_dir`].
    pub confidence: bool,
    /// Images per inference batch.
    pub batch: usize,
    pub shard: Option<Shard>,
    pub overwrite: bool,
    pub upsample: Upsample,
    /// Decoder threads (0: half the cores, at least one, at most 4).
    pub workers: usize,
}

impl LabelSettings {
    /// The colour-map tree: `<out>_color` beside the output folder.
    pub fn color_dir(&self) -> PathBuf {
        sibling(&self.out, "_color")
    }

    /// The overlay tree: `<out>_overlay` beside the output folder.
    pub fn overlay_dir(&self) -> PathBuf {
        sibling(&self.out, "_overlay")
    }

    /// The confidence-map tree: `<out>_confidence` beside the output folder.
    pub fn confidence_dir(&self) -> PathBuf {
        sibling(&self.out, "_confidence")
    }

    /// The entropy-map tree: `<out>_entropy` beside the output folder.
    pub fn entropy_dir(&self) -> PathBuf {
        sibling(&self.out, "_entropy")
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "labels".into());
    dir.with_file_name(format!("{name}{suffix}"))
}

/// Errors that stop labelling as a whole (per-image errors are [`Failure`]s).
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("input folder {0} does not exist")]
    NoInput(PathBuf),
    #[error(transparent)]
    Walk(#[from] DatasetError),
    #[error("no images (PNG or JPEG) under {0}")]
    Empty(PathBuf),
    #[error("batch size must be at least 1")]
    Batch,
}

/// One image that could not be labelled.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub image: PathBuf,
    pub error: String,
}

/// Time spent in each stage of [`label_tree`], in seconds summed over the threads
/// that run it (stages overlap: decoding and writing run beside inference).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageSeconds {
    /// Reading and decoding the images.
    pub decode: f64,
    /// Resizing to the training size and laying out the model input.
    pub resize: f64,
    /// Session runs (the inference thread), including the batch copy-in.
    pub inference: f64,
    /// Softmax, upsampling and arg-max ([`predict::to_train_ids`]).
    pub postprocess: f64,
    /// Label-id mapping, colouring, PNG encoding and writing.
    pub write: f64,
}

/// Nanosecond counters behind [`StageSeconds`].
#[derive(Default)]
struct StageClock([AtomicU64; 5]);

impl StageClock {
    fn add(&self, stage: usize, since: Instant) {
        self.0[stage].fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn seconds(&self) -> StageSeconds {
        let s = |i: usize| self.0[i].load(Ordering::Relaxed) as f64 * 1e-9;
        StageSeconds {
            decode: s(0),
            resize: s(1),
            inference: s(2),
            postprocess: s(3),
            write: s(4),
        }
    }
}

const DECODE: usize = 0;
const RESIZE: usize = 1;
const INFER: usize = 2;
const POST: usize = 3;
const WRITE: usize = 4;

/// The outcome of [`label_tree`].
#[derive(Debug, Clone, Serialize)]
pub struct LabelSummary {
    /// Images in the whole tree.
    pub found: usize,
    /// Images in this shard.
    pub selected: usize,
    pub labelled: usize,
    /// Skipped because a valid output existed.
    pub skipped: usize,
    pub failed: Vec<Failure>,
    pub seconds: f64,
    /// Labelled images per second.
    pub images_per_second: f64,
    /// Where the time went.
    pub stages: StageSeconds,
    pub provider: Provider,
    pub model: PathBuf,
    pub settings: LabelSettings,
}

/// One image to label: its path relative to the input folder, and its outputs.
#[derive(Debug, Clone)]
pub struct Job {
    pub image: PathBuf,
    pub output: PathBuf,
    pub color: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
    pub confidence: Option<PathBuf>,
    pub entropy: Option<PathBuf>,
}

/// The images under `input` (sorted), skipping the given folders (the output trees
/// when they lie inside the input).
pub fn list_images(input: &Path, exclude: &[PathBuf]) -> Result<Vec<PathBuf>, LabelError> {
    if !input.is_dir() {
        return Err(LabelError::NoInput(input.to_path_buf()));
    }
    // Compare canonical paths (the output may be given relative, the input absolute),
    // canonicalising the input once rather than every file.
    let exclude: Vec<PathBuf> = exclude
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let input_canon = std::fs::canonicalize(input).unwrap_or_else(|_| input.to_path_buf());
    let files = datasets::walk_files(input, &|p: &Path| {
        let img = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"));
        let canon = p
            .strip_prefix(input)
            .map_or_else(|_| p.to_path_buf(), |rel| input_canon.join(rel));
        img && !exclude.iter().any(|x| canon.starts_with(x))
    })?;
    Ok(files)
}

/// The jobs of a labelling run (after sharding), and the number of images found.
pub fn plan(settings: &LabelSettings) -> Result<(Vec<Job>, usize), LabelError> {
    let exclude = [
        settings.out.clone(),
        settings.color_dir(),
        settings.overlay_dir(),
        settings.confidence_dir(),
        settings.entropy_dir(),
    ];
    let images = list_images(&settings.input, &exclude)?;
    if images.is_empty() {
        return Err(LabelError::Empty(settings.input.clone()));
    }
    let found = images.len();
    let jobs = images
        .into_iter()
        .enumerate()
        .filter(|(i, _)| settings.shard.is_none_or(|s| s.contains(*i)))
        .map(|(_, image)| {
            let rel = image
                .strip_prefix(&settings.input)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| image.file_name().map(PathBuf::from).unwrap_or_default())
                .with_extension("png");
            Job {
                output: settings.out.join(&rel),
                color: settings.color.then(|| settings.color_dir().join(&rel)),
                overlay: settings.overlay.then(|| settings.overlay_dir().join(&rel)),
                confidence: settings
                    .confidence
                    .then(|| settings.confidence_dir().join(&rel)),
                entropy: settings
                    .confidence
                    .then(|| settings.entropy_dir().join(&rel)),
                image,
            }
        })
        .collect();
    Ok((jobs, found))
}

/// Whether the job's outputs exist and are valid: the label PNG decodes as a
/// single-channel image of `size`, the visualisations have the right size.
pub fn is_done(job: &Job, size: (u32, u32)) -> bool {
    let label_ok = imageio::read_gray(&job.output).is_ok_and(|g| g.dimensions() == size);
    let vis_ok = |p: &Option<PathBuf>| {
        p.as_ref()
            .is_none_or(|p| imageio::dimensions(p).is_ok_and(|d| d == size))
    };
    label_ok
        && vis_ok(&job.color)
        && vis_ok(&job.overlay)
        && vis_ok(&job.confidence)
        && vis_ok(&job.entropy)
}

/// Writes the confidence and entropy maps of one image, if the job asks for them.
fn write_confidence(
    job: &Job,
    scores: ndarray::ArrayView3<'_, f32>,
    width: u32,
    height: u32,
) -> Result<(), ImageError> {
    let (Some(c), Some(e)) = (&job.confidence, &job.entropy) else {
        return Ok(());
    };
    let (conf, ent) = predict::confidence_entropy(scores, width, height);
    imageio::write_gray_png(c, &conf)?;
    imageio::write_gray_png(e, &ent)
}

/// What a decoder thread sends.
enum Decoded {
    Ready {
        job: usize,
        size: (u32, u32),
        input: Vec<f32>,
        original: Option<RgbImage>,
    },
    Skipped,
    Failed(Failure),
}

/// A decoded image waiting for its batch: job index, original size, model input,
/// original image (for overlays).
type Pending = (usize, (u32, u32), Vec<f32>, Option<RgbImage>);

/// What the inference thread hands to the writer.
struct BatchOut {
    items: Vec<(usize, (u32, u32), Option<RgbImage>)>,
    result: Result<crate::engine::Output, String>,
}

/// Progress events, for a progress bar.
pub trait Progress: Sync {
    /// One image finished (labelled, skipped or failed).
    fn image_done(&self);
}

impl<F: Fn() + Sync> Progress for F {
    fn image_done(&self) {
        self()
    }
}

fn decode_job(
    job: &Job,
    size: [u32; 2],
    overwrite: bool,
    keep: bool,
    clock: &StageClock,
) -> Result<Decoded, String> {
    // Resume from the header alone; a broken header fails in the decoding below.
    if !overwrite && imageio::dimensions(&job.image).is_ok_and(|dims| is_done(job, dims)) {
        return Ok(Decoded::Skipped);
    }
    let t = Instant::now();
    let bytes = std::fs::read(&job.image).map_err(|e| e.to_string())?;
    let img = imageio::decode_rgb(&bytes, &job.image).map_err(|e| e.to_string())?;
    drop(bytes);
    clock.add(DECODE, t);
    let t = Instant::now();
    let dims = img.dimensions();
    let input = predict::prepare(&img, size).map_err(|e| e.to_string())?;
    clock.add(RESIZE, t);
    Ok(Decoded::Ready {
        job: 0,
        size: dims,
        input,
        original: keep.then_some(img),
    })
}

fn write_outputs(
    job: &Job,
    train_ids: &GrayImage,
    original: Option<&RgbImage>,
    settings: &LabelSettings,
    label_lut: &[u8; 256],
    color_lut: &palette::ColorLut,
) -> Result<(), ImageError> {
    // Visualisations first: the label PNG is what marks an image as done.
    if let Some(p) = &job.color {
        imageio::write_rgb_png(p, &palette::colorize_with(train_ids, color_lut))?;
    }
    if let (Some(p), Some(img)) = (&job.overlay, original) {
        let colors = palette::colorize_with(train_ids, color_lut);
        imageio::write_rgb_png(p, &palette::blend(img, &colors, 0.5))?;
    }
    match settings.ids {
        OutputIds::Train => imageio::write_gray_png(&job.output, train_ids),
        OutputIds::Label => {
            let mut g = train_ids.clone();
            for p in g.iter_mut() {
                *p = label_lut[*p as usize];
            }
            imageio::write_gray_png(&job.output, &g)
        }
    }
}

/// Makes glibc keep freed memory for reuse instead of handing large blocks back to
/// the system (process-wide, once).
///
/// Labelling allocates and frees the same large buffers for every image and batch,
/// the largest being the score tensors of the outputs (`C x H x W` floats: 40 MB for
/// 19 classes at 1024x512) and the batched input. glibc serves blocks above its mmap
/// threshold (at most 32 MB) with a fresh `mmap` and unmaps them on `free`, so every
/// image paid the page faults and the zeroing of each fresh block (`perf stat -e
/// page-faults` on `lse label` counts them; `scripts/bench-label.sh` times labelling
/// end to end). With `mmap` allocation off and trimming raised to 1 GiB, the freed
/// blocks are reused; peak memory stays the same (the same blocks are live at once as
/// before).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_MAX: i32 = -4;
            // SAFETY: mallopt only changes glibc's allocation policy, takes the
            // allocator's locks (safe beside other threads) and both values are valid.
            unsafe {
                mallopt(M_MMAP_MAX, 0);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}

/// Labels the tree described by `settings` with `engine`: decoder threads read and
/// resize the images, this thread runs the batches, a writer thread upsamples,
/// encodes and writes each batch while the next one runs.
pub fn label_tree(
    engine: &mut Engine,
    settings: &LabelSettings,
    progress: &dyn Progress,
) -> Result<LabelSummary, LabelError> {
    if settings.batch == 0 {
        return Err(LabelError::Batch);
    }
    let t0 = Instant::now();
    let (jobs, found) = plan(settings)?;
    keep_freed_memory();
    let meta = engine.meta().clone();
    let size = meta.train_size;
    let clock = StageClock::default();
    let writer = Writer {
        jobs: &jobs,
        settings,
        label_lut: meta.label_lut(),
        color_lut: meta.color_lut(),
        clock: &clock,
        progress,
    };
    let next = AtomicUsize::new(0);
    let (dec_tx, dec_rx) = mpsc::sync_channel::<Decoded>(settings.batch * 2);
    let (out_tx, out_rx) = mpsc::sync_channel::<BatchOut>(1);
    let (labelled, skipped, mut failed) = std::thread::scope(|scope| {
        for _ in 0..decoder_threads(settings) {
            let tx = dec_tx.clone();
            let (jobs, next, clock) = (&jobs, &next, &clock);
            scope.spawn(move || decode_jobs(jobs, next, size, settings, clock, tx));
        }
        drop(dec_tx);
        let writing = scope.spawn(|| writer.run(out_rx));
        let inference = Inference {
            engine: &mut *engine,
            clock: &clock,
            batches: out_tx,
        };
        let (skipped, mut failed) = inference.run(dec_rx, settings.batch, progress);
        let (done, failures) = writing.join().expect("writer thread panicked");
        failed.extend(failures);
        (done, skipped, failed)
    });
    failed.sort_by(|a, b| a.image.cmp(&b.image));
    let seconds = t0.elapsed().as_secs_f64();
    Ok(LabelSummary {
        found,
        selected: jobs.len(),
        labelled,
        skipped,
        failed,
        seconds,
        images_per_second: labelled as f64 / seconds.max(1e-9),
        stages: clock.seconds(),
        provider: engine.provider(),
        model: engine.path().to_path_buf(),
        settings: settings.clone(),
    })
}

/// Decoder threads: `--workers`, else half the cores, 1 to 4.
fn decoder_threads(settings: &LabelSettings) -> usize {
    if settings.workers > 0 {
        settings.workers
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .clamp(1, 4)
    }
}

/// One decoder thread: decodes the next job until none is left (or nobody listens).
fn decode_jobs(
    jobs: &[Job],
    next: &AtomicUsize,
    size: [u32; 2],
    settings: &LabelSettings,
    clock: &StageClock,
    tx: mpsc::SyncSender<Decoded>,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { break };
        let msg = match decode_job(job, size, settings.overwrite, settings.overlay, clock) {
            Ok(Decoded::Ready {
                size,
                input,
                original,
                ..
            }) => Decoded::Ready {
                job: i,
                size,
                input,
                original,
            },
            Ok(other) => other,
            Err(error) => Decoded::Failed(Failure {
                image: job.image.clone(),
                error,
            }),
        };
        if tx.send(msg).is_err() {
            break;
        }
    }
}

/// The inference side: batches the decoded images, runs them, hands the outputs on.
struct Inference<'a> {
    engine: &'a mut Engine,
    clock: &'a StageClock,
    batches: mpsc::SyncSender<BatchOut>,
}

impl Inference<'_> {
    /// Runs every decoded image in batches of `batch`; returns the skipped count and
    /// the decoding failures. Dropping `self` at the end lets the writer finish.
    fn run(
        mut self,
        decoded: mpsc::Receiver<Decoded>,
        batch: usize,
        progress: &dyn Progress,
    ) -> (usize, Vec<Failure>) {
        let (mut skipped, mut failed) = (0usize, Vec::new());
        let mut pending: Vec<Pending> = Vec::new();
        for msg in decoded {
            match msg {
                Decoded::Ready {
                    job,
                    size,
                    input,
                    original,
                } => {
                    pending.push((job, size, input, original));
                    if pending.len() >= batch {
                        self.flush(&mut pending);
                    }
                }
                Decoded::Skipped => {
                    skipped += 1;
                    progress.image_done();
                }
                Decoded::Failed(f) => {
                    failed.push(f);
                    progress.image_done();
                }
            }
        }
        self.flush(&mut pending);
        (skipped, failed)
    }

    /// Runs the pending images as one batch and sends the result to the writer.
    fn flush(&mut self, pending: &mut Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let t = Instant::now();
        let size = self.engine.meta().train_size;
        let inputs = pending.iter().map(|(_, _, input, _)| input.as_slice());
        let (arr, wrong) = predict::stack_inputs(inputs, size);
        debug_assert!(wrong.is_empty(), "inputs have the training size");
        let result = self.engine.run(arr.view()).map_err(|e| e.to_string());
        drop(arr);
        self.clock.add(INFER, t);
        let items = pending
            .drain(..)
            .map(|(j, sz, _, orig)| (j, sz, orig))
            .collect();
        // The writer only stops early if it panicked; the scope reports that.
        let _ = self.batches.send(BatchOut { items, result });
    }
}

/// The writer side: what it needs to turn a batch's outputs into files.
struct Writer<'a> {
    jobs: &'a [Job],
    settings: &'a LabelSettings,
    label_lut: [u8; 256],
    color_lut: [[u8; 3]; 256],
    clock: &'a StageClock,
    progress: &'a dyn Progress,
}

impl Writer<'_> {
    /// Upsamples, encodes and writes every batch it receives; returns the images
    /// labelled and the failures.
    fn run(&self, batches: mpsc::Receiver<BatchOut>) -> (usize, Vec<Failure>) {
        let mut done = 0usize;
        let mut failures = Vec::new();
        for b in batches {
            let out = match b.result {
                Ok(out) => out,
                Err(e) => {
                    for (j, _, _) in &b.items {
                        failures.push(Failure {
                            image: self.jobs[*j].image.clone(),
                            error: format!("inference failed: {e}"),
                        });
                        self.progress.image_done();
                    }
                    continue;
                }
            };
            let results: Vec<Result<(), Failure>> = b
                .items
                .par_iter()
                .enumerate()
                .map(|(k, item)| self.write_image(&out, k, item))
                .collect();
            for r in results {
                match r {
                    Ok(()) => done += 1,
                    Err(f) => failures.push(f),
                }
            }
        }
        (done, failures)
    }

    /// Image `k` of a batch: its train ids at its own size, then the confidence maps
    /// and the PNGs (the label PNG last: it marks the image done).
    fn write_image(
        &self,
        out: &crate::engine::Output,
        k: usize,
        (j, (w, h), original): &(usize, (u32, u32), Option<RgbImage>),
    ) -> Result<(), Failure> {
        let job = &self.jobs[*j];
        let t = Instant::now();
        let res = predict::to_train_ids(
            out.scores.index_axis(Axis(0), k),
            out.train_ids.index_axis(Axis(0), k),
            *w,
            *h,
            self.settings.upsample,
        )
        .and_then(|ids| {
            self.clock.add(POST, t);
            let t = Instant::now();
            write_confidence(job, out.scores.index_axis(Axis(0), k), *w, *h)?;
            let res = write_outputs(
                job,
                &ids,
                original.as_ref(),
                self.settings,
                &self.label_lut,
                &self.color_lut,
            );
            self.clock.add(WRITE, t);
            res
        });
        self.progress.image_done();
        res.map_err(|e| Failure {
            image: job.image.clone(),
            error: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_list() {
        let n = 3;
        let shards: Vec<Shard> = (1..=n)
            .map(|k| format!("{k}/{n}").parse().unwrap())
            .collect();
        for i in 0..20 {
            assert_eq!(shards.iter().filter(|s| s.contains(i)).count(), 1);
        }
        assert!("0/3".parse::<Shard>().is_err());
        assert!("4/3".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }

    #[test]
    fn output_trees_inside_the_input_are_not_inputs() {
        let d = tempfile::tempdir().unwrap();
        let img = RgbImage::new(2, 2);
        for rel in [
            "a/x_1_2_leftImg8bit.png",
            "out/a/x_1_2_leftImg8bit.png",
            "b.jpg",
        ] {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            img.save(&p).unwrap();
        }
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        let found = list_images(d.path(), &[d.path().join("a/../out")]).unwrap();
        let rel: Vec<_> = found
            .iter()
            .map(|p| p.strip_prefix(d.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            rel,
            [
                PathBuf::from("a/x_1_2_leftImg8bit.png"),
                PathBuf::from("b.jpg")
            ]
        );
    }

    #[test]
    fn visualisation_trees_are_siblings() {
        let s = LabelSettings {
            input: "in".into(),
            out: "/tmp/res/pred".into(),
            ids: OutputIds::Label,
            color: true,
            overlay: true,
            confidence: true,
            batch: 1,
            shard: None,
            overwrite: false,
            upsample: Upsample::Probabilities,
            workers: 1,
        };
        assert_eq!(s.color_dir(), PathBuf::from("/tmp/res/pred_color"));
        assert_eq!(s.overlay_dir(), PathBuf::from("/tmp/res/pred_overlay"));
        assert_eq!(
            s.confidence_dir(),
            PathBuf::from("/tmp/res/pred_confidence")
        );
        assert_eq!(s.entropy_dir(), PathBuf::from("/tmp/res/pred_entropy"));
    }
}
