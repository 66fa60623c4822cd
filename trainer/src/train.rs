//! The training loops: source-only training and the LSE adaptation rounds
//! (docs/method.md), resumable at any iteration.
//!
//! One iteration (both loops): forward + backward a source batch (cross-entropy,
//! ignore 255), in adaptation also forward + backward a batch of generated target
//! examples (cross-entropy plus the optional focal term), then one Adam step over
//! two groups: weights at `lr_weights`, biases at `lr_biases`, both multiplied by
//! `lr_decay` every `lr_decay_every` iterations; the frozen upsampling kernels are not
//! in the optimiser.
//!
//! One round of adaptation with share p: rank every target image (eval mode, at the
//! target size, probabilities on the device) -> [`lse::select`]; thresholds from the
//! boundary images -> [`lse::thresholds`]; for each confident image the reliable mask
//! and K random windows -> [`lse::generate`] (examples kept in memory and cached in the
//! run directory so a resumed round trains on exactly the same examples); then
//! `|S| * K * epochs` iterations over the shuffled examples. The target's labels are
//! never read here: target images are loaded with `Dataset::load_image` only.
//!
//! Determinism: the data order depends only on the seed and the iteration
//! ([`data::Order`]), the windows on the seed and the round, and libtorch's generator
//! (dropout) is re-seeded from the seed and the iteration before every iteration, so a
//! resumed run on the CPU reaches the same weights as an uninterrupted one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lse_runtime::datasets::{Dataset, DatasetKind, DatasetSpec, Role};
use lse_runtime::evaluate::Evaluation;
use lse_runtime::labels::ClassSubset;
use lse_runtime::metrics::ConfusionMatrix;

use crate::metrics_log::{self, EvalLine, IterationLine, RoundLine};
use lse_runtime::provenance::DatasetSummary;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor, nn};

use crate::amp::{self, Amp};
use crate::checkpoint::{self, CheckpointMeta};
use crate::config::Config;
use crate::data::{self, Batch, Order};
use crate::fcn8s::Fcn8s;
use crate::optim::Adam;
use crate::run::{
    self, LoopState, Phase, RoundStats, RunCommand, RunDir, RunRecord, RunStatus, Session,
};
use crate::{losses, lse};

mod round;

/// One round's scale-invariant examples: for each confident target image (dataset
/// index), its K windows and the K pseudo-labels (u8, 255 ignore). The example images
/// are not stored: they are rebuilt from the target image and the window
/// ([`lse::window_image`]), which keeps a round's memory to the labels.
#[derive(Debug, Default)]
struct RoundExamples {
    sources: Vec<usize>,
    windows: Vec<Vec<lse::Window>>,
    labels: Vec<Tensor>,
}

impl RoundExamples {
    /// The batch of examples `picks` (`(image, window)`), their target images taken in
    /// order from `targets`.
    fn batch(
        &self,
        picks: &[(usize, i64)],
        targets: &mut data::Prefetch<(usize, Tensor)>,
    ) -> anyhow::Result<Batch> {
        let mut imgs = Vec::with_capacity(picks.len());
        for &(i, w) in picks {
            let (_, img) = targets.recv()?;
            imgs.push(lse::window_image(&img, &self.windows[i][w as usize]));
        }
        Ok(Batch {
            images: Tensor::stack(&imgs, 0),
            labels: Tensor::stack(
                &picks
                    .iter()
                    .map(|&(i, w)| self.labels[i].get(w).to_kind(Kind::Int64))
                    .collect::<Vec<_>>(),
                0,
            ),
        })
    }

    /// The windows as one `|S| x K x 4` tensor of `(y, x, h, w)`.
    fn windows_tensor(&self) -> Tensor {
        let wins: Vec<i64> = self
            .windows
            .iter()
            .flatten()
            .flat_map(|w| [w.y, w.x, w.h, w.w])
            .collect();
        Tensor::from_slice(&wins).view([self.sources.len() as i64, -1, 4])
    }
}

/// Named parameters.
pub type Named = Vec<(String, Tensor)>;

/// A network on a device with its checkpoint metadata.
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Fcn8s,
    pub meta: CheckpointMeta,
    pub device: Device,
}

impl Model {
    /// Loads one of our checkpoints onto `device`, checking the configured width and
    /// initialisation when set.
    pub fn load(path: &Path, device: Device, cfg: Option<&Config>) -> anyhow::Result<Self> {
        let meta = checkpoint::read_meta(path)?;
        if let Some(cfg) = cfg {
            if let Some(w) = cfg.width
                && (w - meta.config.width).abs() > 1e-9
            {
                anyhow::bail!(
                    "checkpoint {} is a width-{} network, but the configuration asks for width {w} \
                     (setting `width`)",
                    path.display(),
                    meta.config.width
                );
            }
            if let Some(i) = cfg.init
                && i != meta.init
            {
                anyhow::bail!(
                    "checkpoint {} was initialised with `{:?}`, but the configuration asks for `{:?}` \
                     (setting `init`)",
                    path.display(),
                    meta.init,
                    i
                );
            }
        }
        let mut vs = nn::VarStore::new(device);
        let net = Fcn8s::new(&vs.root(), meta.config, meta.init);
        checkpoint::load_network(&mut vs, path, meta.config)?;
        Ok(Self {
            vs,
            net,
            meta,
            device,
        })
    }

    /// Class probabilities `C x H x W` (on the device) of one input image `3 x H x W`,
    /// in eval mode.
    pub fn probs(&self, image: &Tensor) -> Tensor {
        self.probs_batch(&image.unsqueeze(0)).squeeze_dim(0)
    }

    /// Class probabilities `N x C x H x W` (on the device) of a batch of images
    /// `N x 3 x H x W`, in eval mode: one forward pass for the batch.
    pub fn probs_batch(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| {
            self.net
                .forward_t(&images.to_device(self.device), false)
                .softmax(1, Kind::Float)
        })
    }

    /// The trainable parameters by name, split into weights and biases (the frozen
    /// upsampling kernels are not trainable and not included).
    pub fn param_groups(&self) -> (Named, Named) {
        let mut vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (ws, bs): (Vec<_>, Vec<_>) =
            vars.into_iter().partition(|(n, _)| n.ends_with(".weight"));
        let (w2, b2) = self.net.weights_and_biases();
        debug_assert_eq!((ws.len(), bs.len()), (w2.len(), b2.len()));
        (ws, bs)
    }
}

/// Forward + backward of one batch in train mode; returns the loss value. `focal`:
/// `None` for a source batch (cross-entropy), `Some(focal)` for generated target
/// examples (cross-entropy plus the focal term when `focal` is `Some`). With `amp`
/// the network runs under autocast and the loss is computed on float32 logits; with
/// `loss_scale` the loss is scaled before the backward pass (float16).
pub fn forward_backward(
    model: &Model,
    batch: &Batch,
    focal: Option<Option<(f64, f64)>>,
    amp: Amp,
    loss_scale: Option<f64>,
) -> f64 {
    let dev = model.device;
    let x = batch.images.to_device(dev);
    let y = batch.labels.to_device(dev);
    let logits = amp::autocast(amp, dev, || model.net.forward_t(&x, true)).to_kind(Kind::Float);
    let loss = match focal {
        Some(f) => losses::target_loss(&logits, &y, f),
        None => losses::source_loss(&logits, &y),
    };
    match loss_scale {
        Some(s) => (&loss * s).backward(),
        None => loss.backward(),
    }
    loss.double_value(&[])
}

/// The class subset results are reported over for a source kind (its layout's).
pub fn subset_for(source: DatasetKind) -> ClassSubset {
    source.layout().subset
}

/// Classes a source does not teach (skipped in the ranking): those outside its
/// layout's subset.
pub fn skipped_classes(source: DatasetKind) -> Vec<usize> {
    let untaught = source.layout().untaught_train_ids();
    untaught.into_iter().map(usize::from).collect()
}

/// A progress bar for one phase, with its rate.
pub fn bar(len: u64, phase: &str, unit: &str, quiet: bool) -> ProgressBar {
    let b = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix:>9}} {{bar:30}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}  {{msg}}"
        ))
        .expect("valid template"),
    );
    b.set_prefix(phase.to_string());
    b
}

/// Evaluates on a labelled target split with the protocol of docs/method.md: predict at
/// `size`, upsample the probabilities bilinearly to the label's full resolution,
/// arg-max, one confusion matrix over all images.
pub fn evaluate(
    model: &Model,
    ds: Arc<Dataset>,
    size: [u32; 2],
    mean_bgr: [f64; 3],
    limit: usize,
    quiet: bool,
) -> anyhow::Result<ConfusionMatrix> {
    if !ds.has_labels() {
        anyhow::bail!(
            "{} dataset at {} has no labels to evaluate against",
            ds.kind(),
            ds.root().display()
        );
    }
    let classes = model.meta.config.classes as usize;
    let n = if limit == 0 {
        ds.len()
    } else {
        limit.min(ds.len())
    };
    let mut cm = ConfusionMatrix::new(classes);
    let pb = bar(n as u64, "eval", "images", quiet);
    let mut stream = data::eval_stream(ds, n, size, mean_bgr);
    for _ in 0..n {
        let (img, label) = stream.recv()?;
        let (w, h) = label.dimensions();
        let pred = tch::no_grad(|| {
            let p = model.probs(&img).unsqueeze(0);
            let p = if p.size()[2..] == [h as i64, w as i64] {
                p
            } else {
                // The evaluation protocol of the model contract: bilinear with
                // aligned corners, as the reference's evaluation.
                p.upsample_bilinear2d([h as i64, w as i64], true, None, None)
            };
            p.argmax(1, false)
                .to_kind(Kind::Uint8)
                .flatten(0, -1)
                .to_device(Device::Cpu)
        });
        let pred: Vec<u8> = Vec::try_from(pred)?;
        cm.add(label.as_raw(), &pred)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(cm)
}

/// What a run trains on.
#[derive(Debug, Clone)]
pub struct RunInputs {
    pub init: PathBuf,
    pub source: DatasetSpec,
    /// The target (adaptation: required; source-only: optional, for evaluation).
    pub target: Option<DatasetSpec>,
    pub source_list: Option<PathBuf>,
}

/// Process-level options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit abruptly (as if killed) after this many iterations of this process.
    pub stop_after: Option<u64>,
    pub quiet: bool,
    pub threads: i32,
    /// Write every round's intermediate results here (the one-round test).
    pub dump_dir: Option<PathBuf>,
}

/// The state of a run in progress.
pub struct Trainer {
    pub cfg: Config,
    pub model: Model,
    pub adam: Adam,
    pub state: LoopState,
    pub run: RunDir,
    pub record: RunRecord,
    pub source: Arc<Dataset>,
    pub target: Option<Arc<Dataset>>,
    pub val: Option<Arc<Dataset>>,
    pub opts: RunOptions,
    session_iterations: u64,
    last_checkpoint: Instant,
}

fn check_classes(model: &Model, what: &str) -> anyhow::Result<()> {
    let n = model.meta.config.classes as usize;
    if n != lse_runtime::labels::NUM_CLASSES {
        anyhow::bail!(
            "class sets differ: the checkpoint predicts {n} classes, but the {what} is labelled with \
             the {} Cityscapes train classes",
            lse_runtime::labels::NUM_CLASSES
        );
    }
    Ok(())
}

/// The datasets a run reads.
struct RunData {
    source: Arc<Dataset>,
    target: Option<Arc<Dataset>>,
    val: Option<Arc<Dataset>>,
}

/// The run directory, configuration and record of a run to continue.
fn resumed_run(command: RunCommand, out: &Path) -> anyhow::Result<(RunDir, Config, RunRecord)> {
    let run = RunDir::open(out)?;
    let cfg = run.read_config()?;
    let record = run.read_record()?;
    if record.command != command {
        anyhow::bail!(
            "{} is a `{}` run; resume it with `lse-train {} --resume {}`",
            out.display(),
            record.command,
            record.command,
            out.display()
        );
    }
    Ok((run, cfg, record))
}

/// The run directory (not created yet), configuration and record of a new run.
fn new_run(
    command: RunCommand,
    cfg: Config,
    inputs: &RunInputs,
    out: &Path,
) -> anyhow::Result<(RunDir, Config, RunRecord)> {
    cfg.validate()?;
    // The folder is created only once every input is checked (in `Trainer::open`),
    // so a bad input leaves nothing behind.
    let run = RunDir::new(out);
    run.refuse_existing()?;
    let record = RunRecord {
        command,
        method: command.method().into(),
        init: inputs.init.clone(),
        source: inputs.source.to_string(),
        target: inputs.target.as_ref().map(|t| t.to_string()),
        versions: run::versions(),
        started: run::now_unix(),
        ended: None,
        status: RunStatus::Running,
        sessions: Vec::new(),
        phase_seconds: BTreeMap::new(),
        rounds: Vec::new(),
        evaluation: None,
        initial_evaluation: None,
        miou_curve: Vec::new(),
        plot_legend: run::PLOT_LEGEND.into(),
        train_size: cfg.target_size,
        width: 0.0,
        classes: 0,
        init_scheme: String::new(),
        published: None,
    };
    Ok((run, cfg, record))
}

/// Checks the record's datasets and opens them: the source (train split, labelled),
/// the target's `target_split` (adaptation only) and its `val_split` (when it has
/// labels and evaluation is on).
fn open_datasets(
    command: RunCommand,
    cfg: &Config,
    record: &RunRecord,
    source_list: Option<&Path>,
) -> anyhow::Result<(DatasetSpec, RunData)> {
    let source: DatasetSpec = record.source.parse()?;
    let target: Option<DatasetSpec> = record.target.as_deref().map(str::parse).transpose()?;
    if source.kind.layout().role != Role::Source && command == RunCommand::Adapt {
        let expected = Role::Source.specs();
        anyhow::bail!("the adaptation source must be {expected} (got {source})");
    }
    if let Some(t) = &target
        && t.kind.layout().role != Role::Target
    {
        anyhow::bail!("the target must be {} (got {t})", Role::Target.specs());
    }
    let source_ds = Arc::new(
        Dataset::open_spec(&source, "train", source_list)
            .with_context(|| format!("opening the source {source}"))?,
    );
    if !source_ds.has_labels() {
        anyhow::bail!("the source {source} has no labels (source training needs them)");
    }
    let target_ds = match (&target, command) {
        (Some(t), RunCommand::Adapt) => Some(Arc::new(
            Dataset::open_spec(t, &cfg.target_split, None)
                .with_context(|| format!("opening the target {t} (split {})", cfg.target_split))?,
        )),
        _ => None,
    };
    let data = RunData {
        source: source_ds,
        target: target_ds,
        val: open_val(target.as_ref(), cfg),
    };
    Ok((source, data))
}

/// The target's labelled `val_split` when evaluation is on; `None` (logged) when it
/// cannot be opened or has no labels.
fn open_val(target: Option<&DatasetSpec>, cfg: &Config) -> Option<Arc<Dataset>> {
    match target {
        Some(t) if cfg.evaluate => match Dataset::open_spec(t, &cfg.val_split, None) {
            Ok(d) if d.has_labels() => Some(Arc::new(d)),
            Ok(_) => {
                tracing::info!(
                    "target split {} has no labels: no evaluation",
                    cfg.val_split
                );
                None
            }
            Err(e) => {
                tracing::info!("no evaluation: {e}");
                None
            }
        },
        _ => None,
    }
}

/// The optimiser state saved in a resumable checkpoint.
type SavedTensors = HashMap<String, Tensor>;

/// The network: the last resumable checkpoint of a resumed run (with its loop state
/// and saved tensors), else `--init`.
fn load_model(
    run: &RunDir,
    record: &RunRecord,
    cfg: &Config,
    device: Device,
    resume: bool,
) -> anyhow::Result<(Model, LoopState, Option<SavedTensors>)> {
    let last = run.last_path();
    if resume && last.is_file() {
        let model = Model::load(&last, device, None)?;
        let (tensors, state) = run::load_state(&last)?;
        Ok((model, state, Some(tensors)))
    } else {
        let model = Model::load(&record.init, device, Some(cfg))
            .with_context(|| format!("loading --init {}", record.init.display()))?;
        Ok((model, LoopState::default(), None))
    }
}

/// Checks that the network's classes are those of the source.
fn check_model(model: &Model, source: &DatasetSpec) -> anyhow::Result<()> {
    check_classes(model, &format!("source {source}"))?;
    // A run's checkpoint names its source as `kind:DIR`, a published one by its
    // summary; both tell the kind.
    if let Some(src) = model.meta.extra.get("source")
        && let Some(trained) = DatasetSummary::describe(src)
        && subset_for(trained.kind) != subset_for(source.kind)
    {
        anyhow::bail!(
            "class sets differ: the checkpoint was trained on a {} source ({} classes), \
             the source given is {} ({} classes)",
            trained.kind,
            subset_for(trained.kind).count(),
            source.kind,
            subset_for(source.kind).count()
        );
    }
    Ok(())
}

/// Adam over the model's weights and biases, restored from the checkpoint `last`'s
/// `tensors` and loop `state` when resuming.
fn optimiser(
    model: &Model,
    cfg: &Config,
    tensors: Option<&SavedTensors>,
    state: &LoopState,
    last: &Path,
) -> anyhow::Result<Adam> {
    let (ws, bs) = model.param_groups();
    let mut adam = Adam::new(ws, bs, cfg.adam_betas, cfg.adam_eps);
    if cfg.amp.scales_loss() {
        adam.loss_scale = Some(65536.0);
    }
    if let Some(t) = tensors {
        adam.load_state(t)
            .with_context(|| format!("restoring the optimiser from {}", last.display()))?;
        adam.step = state.adam_step;
        adam.loss_scale = state.loss_scale;
        adam.good_steps = state.good_steps;
    }
    Ok(adam)
}

/// Records the model and a new session of this process in the run record.
fn start_session(record: &mut RunRecord, model: &Model, device: Device, state: &LoopState) {
    record.width = model.meta.config.width;
    record.classes = model.meta.config.classes;
    record.init_scheme = format!("{:?}", model.meta.init).to_lowercase();
    record.sessions.push(Session {
        started: run::now_unix(),
        ended: None,
        device: format!("{device:?}"),
        threads: tch::get_num_threads(),
        start_iteration: state.iteration,
    });
    record.status = RunStatus::Running;
}

/// The losses of one training iteration, with the dropout seed and the learning
/// rates `(weights, biases)` it ran with.
struct Step {
    source_loss: f64,
    /// Adaptation: the loss on the generated target examples.
    target_loss: Option<f64>,
    seed: i64,
    lr: (f64, f64),
}

impl Trainer {
    /// Starts a new run (`inputs` given) or continues the one in `out` (`inputs`
    /// `None`; `cfg` is then the run's own).
    pub fn open(
        command: RunCommand,
        cfg: Option<Config>,
        inputs: Option<RunInputs>,
        out: &Path,
        device: Device,
        opts: RunOptions,
    ) -> anyhow::Result<Self> {
        let resume = inputs.is_none();
        let (run, cfg, mut record) = match &inputs {
            None => resumed_run(command, out)?,
            Some(i) => new_run(command, cfg.expect("a new run has a config"), i, out)?,
        };
        cfg.amp.check_device(device)?;
        let source_list = inputs.as_ref().and_then(|i| i.source_list.clone());
        let (source, data) = open_datasets(command, &cfg, &record, source_list.as_deref())?;
        let (model, state, tensors) = load_model(&run, &record, &cfg, device, resume)?;
        check_model(&model, &source)?;
        let adam = optimiser(&model, &cfg, tensors.as_ref(), &state, &run.last_path())?;
        if state.finished {
            anyhow::bail!("the run in {} is already finished", out.display());
        }
        if resume {
            run.truncate_metrics(state.iteration)?;
            // Rounds recorded after the checkpoint (none normally) are dropped.
            record.rounds.truncate(state.round);
        } else {
            RunDir::create(&run.root)?;
            run.write_config(&cfg)?;
        }
        start_session(&mut record, &model, device, &state);
        run.write_record(&record)?;
        Ok(Self {
            cfg,
            model,
            adam,
            state,
            run,
            record,
            source: data.source,
            target: data.target,
            val: data.val,
            opts,
            session_iterations: 0,
            last_checkpoint: Instant::now(),
        })
    }

    fn add_phase_time(&mut self, phase: Phase, secs: f64) {
        *self.record.phase_seconds.entry(phase).or_default() += secs;
    }

    /// Writes the resumable checkpoint (and the run record).
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.state.adam_step = self.adam.step;
        self.state.loss_scale = self.adam.loss_scale;
        self.state.good_steps = self.adam.good_steps;
        let meta = self.model.meta.clone();
        run::save_state(
            &self.run.last_path(),
            &self.model.vs,
            &meta,
            self.adam.state_tensors(),
            &self.state,
        )?;
        self.run.write_record(&self.record)?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Called after every iteration: periodic checkpoint, then the simulated kill.
    fn after_iteration(&mut self) -> anyhow::Result<()> {
        self.session_iterations += 1;
        let every = self.cfg.checkpoint_every;
        if every > 0 && self.state.iteration.is_multiple_of(every) {
            self.checkpoint()?;
        }
        if self.opts.stop_after == Some(self.session_iterations) {
            eprintln!(
                "stopping abruptly after {} iterations (--stop-after-iterations), as if killed",
                self.session_iterations
            );
            std::process::exit(75);
        }
        Ok(())
    }

    /// Seeds libtorch's generator (dropout) for this iteration; returns the seed.
    fn seed_iteration(&self, phase: u64) -> i64 {
        let seed = data::mix_seed(&[self.cfg.seed, phase, self.state.iteration]) as i64;
        tch::manual_seed(seed);
        seed
    }

    /// The first iteration of a round for the one-round test: its inputs, dropout
    /// seed and learning rates, and the parameters after the optimiser step.
    fn dump_step(
        &self,
        dir: &Path,
        r: usize,
        src: &Batch,
        picks: &[(usize, i64)],
        seed: i64,
        lr: (f64, f64),
    ) -> anyhow::Result<()> {
        let picks: Vec<i64> = picks.iter().flat_map(|&(i, w)| [i as i64, w]).collect();
        let mut named: Vec<(String, Tensor)> = vec![
            ("source_images".into(), src.images.shallow_clone()),
            ("source_labels".into(), src.labels.shallow_clone()),
            ("picks".into(), Tensor::from_slice(&picks).view([-1, 2])),
            ("seed".into(), Tensor::from_slice(&[seed])),
            ("lr".into(), Tensor::from_slice(&[lr.0, lr.1])),
        ];
        for (name, t) in self.model.vs.variables() {
            named.push((format!("param.{name}"), t.detach().to_device(Device::Cpu)));
        }
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(
            &refs,
            dir.join(format!("round-{:02}-step.safetensors", r + 1)),
        )?;
        Ok(())
    }

    fn forward_backward(&self, batch: &Batch, target: bool) -> f64 {
        let focal = target.then(|| self.cfg.focal_params());
        forward_backward(
            &self.model,
            batch,
            focal,
            self.cfg.amp,
            self.adam.loss_scale,
        )
    }

    /// The training step of source training (`tgt` `None`) and of the rounds: seeds
    /// dropout, forward + backward of the source batch (and of the generated target
    /// examples), then one optimiser step at the current iteration's learning rates.
    /// A loss that is not finite stops the run before the step.
    fn step(&mut self, src: &Batch, tgt: Option<&Batch>) -> anyhow::Result<Step> {
        let seed = self.seed_iteration(if tgt.is_some() { 2 } else { 1 });
        self.adam.zero_grad();
        let ls = self.forward_backward(src, false);
        let lt = tgt.map(|t| self.forward_backward(t, true));
        match lt {
            None if !ls.is_finite() => anyhow::bail!(
                "the source loss is {ls} at iteration {} (lower lr_weights?)",
                self.state.iteration + 1
            ),
            Some(lt) if !ls.is_finite() || !lt.is_finite() => anyhow::bail!(
                "round {}: loss is not finite (source {ls}, target {lt}) at iteration {} (lower lr_weights?)",
                self.state.round + 1,
                self.state.iteration + 1
            ),
            _ => {}
        }
        let lr = self.cfg.lr_at(self.state.iteration);
        self.adam.step([lr.0, lr.1]);
        Ok(Step {
            source_loss: ls,
            target_loss: lt,
            seed,
            lr,
        })
    }

    /// Counts a step done: the round's loss sums, the log, the progress bar, then
    /// [`Self::after_iteration`].
    fn end_iteration(&mut self, step: &Step, pb: &ProgressBar) -> anyhow::Result<()> {
        self.state.iteration += 1;
        let ls = step.source_loss;
        match step.target_loss {
            None => {
                self.log_iteration("source", ls, None)?;
                pb.inc(1);
                pb.set_message(format!("loss {ls:.4}"));
            }
            Some(lt) => {
                let cur = self.state.current.as_mut().expect("prepared");
                cur.iterations_done += 1;
                cur.source_loss_sum += ls;
                cur.target_loss_sum += lt;
                self.log_iteration("adapt", ls, Some(lt))?;
                pb.inc(1);
                pb.set_message(format!("loss {ls:.3} / {lt:.3}"));
            }
        }
        self.after_iteration()
    }

    fn log_iteration(&self, phase: &str, src: f64, tgt: Option<f64>) -> anyhow::Result<()> {
        let it = self.state.iteration;
        if !it.is_multiple_of(self.cfg.log_every) {
            return Ok(());
        }
        let (lr, _) = self.cfg.lr_at(it - 1);
        let line = IterationLine {
            iteration: it,
            lr,
            phase,
            round: tgt.map(|_| self.state.round + 1),
            source_loss: src,
            target_loss: tgt,
        };
        self.run.log(&line)
    }

    fn eval_val(&mut self) -> anyhow::Result<Option<Evaluation>> {
        let Some(val) = self.val.clone() else {
            return Ok(None);
        };
        let t0 = Instant::now();
        let n = if self.cfg.val_limit == 0 {
            val.len()
        } else {
            self.cfg.val_limit.min(val.len())
        };
        let cm = evaluate(
            &self.model,
            val,
            self.cfg.target_size,
            self.cfg.mean_bgr,
            self.cfg.val_limit,
            self.opts.quiet,
        )?;
        self.add_phase_time(Phase::Eval, t0.elapsed().as_secs_f64());
        let subset = subset_for(self.source.kind());
        let ev = Evaluation::of_split(&cm, subset, &self.cfg.val_split, n);
        if let Some(m) = ev.miou {
            self.record.miou_curve.push((self.state.iteration, m));
            self.run.log(&EvalLine {
                iteration: self.state.iteration,
                miou: m,
                phase: metrics_log::EVAL,
            })?;
        }
        Ok(Some(ev))
    }

    /// The source batches from the current iteration on.
    fn source_batches(&self) -> data::Prefetch<Batch> {
        data::source_stream(
            self.source.clone(),
            self.cfg.source_size_for(self.source.kind()),
            self.cfg.batch_size,
            self.cfg.mean_bgr,
            data::mix_seed(&[self.cfg.seed, 1]),
            self.state.iteration,
        )
    }

    /// Source-only training for `source_iterations` iterations.
    pub fn train_source(&mut self) -> anyhow::Result<()> {
        let total = self.cfg.source_iterations;
        let start = self.state.iteration;
        let mut stream = self.source_batches();
        let pb = bar(total, "source", "it", self.opts.quiet);
        pb.set_position(start);
        let t0 = Instant::now();
        while self.state.iteration < total {
            let batch = stream.recv()?;
            let step = self.step(&batch, None)?;
            self.end_iteration(&step, &pb)?;
        }
        pb.finish_and_clear();
        self.add_phase_time(Phase::Train, t0.elapsed().as_secs_f64());
        drop(stream);
        let ev = self.eval_val()?;
        self.finish(ev)
    }

    fn save_cache(&self, r: usize, ex: &RoundExamples) -> anyhow::Result<()> {
        let mut named = Vec::new();
        let sources: Vec<i64> = ex.sources.iter().map(|&i| i as i64).collect();
        named.push(("sources".to_string(), Tensor::from_slice(&sources)));
        named.push(("windows".to_string(), ex.windows_tensor()));
        for (i, lb) in ex.labels.iter().enumerate() {
            named.push((format!("labels.{i:06}"), lb.shallow_clone()));
        }
        checkpoint::save(&self.run.cache_path(r + 1), &self.model.meta, &named)?;
        Ok(())
    }

    fn load_cache(&self, r: usize) -> anyhow::Result<RoundExamples> {
        let path = self.run.cache_path(r + 1);
        let (_, tensors) = checkpoint::read_safetensors(&path)
            .with_context(|| format!("reading the round's example cache {}", path.display()))?;
        let mut map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let sources = map.remove("sources").context("cache sources missing")?;
        let windows = map.remove("windows").context("cache windows missing")?;
        let sources: Vec<i64> = Vec::try_from(&sources)?;
        let n = sources.len();
        let wins: Vec<i64> = Vec::try_from(windows.flatten(0, -1))?;
        let k = if n == 0 { 0 } else { wins.len() / (4 * n) };
        let mut ex = RoundExamples::default();
        for (i, &src) in sources.iter().enumerate() {
            ex.sources.push(src as usize);
            ex.windows.push(
                (0..k)
                    .map(|j| {
                        let o = (i * k + j) * 4;
                        lse::Window {
                            y: wins[o],
                            x: wins[o + 1],
                            h: wins[o + 2],
                            w: wins[o + 3],
                        }
                    })
                    .collect(),
            );
            ex.labels.push(
                map.remove(&format!("labels.{i:06}"))
                    .context("cache label missing")?,
            );
        }
        Ok(ex)
    }

    /// The LSE rounds.
    pub fn adapt(&mut self) -> anyhow::Result<()> {
        let rounds = self.cfg.p_schedule.len();
        let mut last_eval = None;
        if self.state.round == 0
            && !self.state.examples_ready
            && self.record.initial_evaluation.is_none()
        {
            // The starting point, for the per-class comparison of the report.
            self.record.initial_evaluation = self.eval_val()?;
            self.run.write_record(&self.record)?;
        }
        while self.state.round < rounds {
            let r = self.state.round;
            let ex = self.round_examples(r)?;
            let train_seconds = self.train_round(r, &ex)?;
            last_eval = self.end_round(r, train_seconds)?;
        }
        if last_eval.is_none() {
            last_eval = self.record.evaluation.clone();
        }
        self.finish(last_eval)
    }

    /// Round `r`'s examples: from the cache of a resumed round, else prepared (and
    /// cached, with a checkpoint).
    fn round_examples(&mut self, r: usize) -> anyhow::Result<RoundExamples> {
        if self.state.examples_ready {
            return self.load_cache(r);
        }
        let ex = self.prepare_round(r)?;
        self.save_cache(r, &ex)?;
        self.state.examples_ready = true;
        self.checkpoint()?;
        Ok(ex)
    }

    /// The examples `(image, window)` of each remaining iteration of round `r`
    /// (iterations `done..total`), in the round's seeded order.
    fn round_picks(
        &self,
        r: usize,
        ex: &RoundExamples,
        done: u64,
        total: u64,
    ) -> Vec<Vec<(usize, i64)>> {
        // Flat list of examples: (image index, window index).
        let k = self.cfg.patches as i64;
        let examples: Vec<(usize, i64)> = (0..ex.sources.len())
            .flat_map(|i| (0..k).map(move |j| (i, j)))
            .collect();
        let b = self.cfg.batch_size as u64;
        let mut order = Order::new(
            examples.len(),
            data::mix_seed(&[self.cfg.seed, 3]),
            r as u64,
        );
        (done..total)
            .map(|j| (0..b).map(|q| examples[order.index(j * b + q)]).collect())
            .collect()
    }

    /// The remaining iterations of round `r` on its examples; returns the seconds.
    fn train_round(&mut self, r: usize, ex: &RoundExamples) -> anyhow::Result<f64> {
        let stats = self.state.current.as_ref().expect("prepared");
        let (total, done) = (stats.iterations, stats.iterations_done);
        let all_picks = self.round_picks(r, ex, done, total);
        let mut stream = self.source_batches();
        // The target images of every remaining iteration, in order, loaded and
        // resized in the background.
        let image_order: Vec<usize> = all_picks
            .iter()
            .flatten()
            .map(|&(i, _)| ex.sources[i])
            .collect();
        let mut targets = data::image_stream(
            self.target.clone().expect("adapt has a target"),
            image_order,
            self.cfg.target_size,
            self.cfg.mean_bgr,
        );
        let pb = bar(total, &format!("round {}", r + 1), "it", self.opts.quiet);
        pb.set_position(done);
        let t0 = Instant::now();
        for j in done..total {
            let src = stream.recv()?;
            let picks = &all_picks[(j - done) as usize];
            let tgt = ex.batch(picks, &mut targets)?;
            let step = self.step(&src, Some(&tgt))?;
            if j == 0
                && let Some(dir) = &self.opts.dump_dir
            {
                self.dump_step(dir, r, &src, picks, step.seed, step.lr)?;
            }
            self.end_iteration(&step, &pb)?;
        }
        pb.finish_and_clear();
        drop(stream);
        drop(targets);
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Closes round `r`: its statistics and evaluation, the checkpoint and the round's
    /// network, the plot; returns the evaluation.
    fn end_round(&mut self, r: usize, train_seconds: f64) -> anyhow::Result<Option<Evaluation>> {
        self.add_phase_time(Phase::Train, train_seconds);
        let mut stats = self.state.current.take().expect("prepared");
        *stats.seconds.entry(Phase::Train).or_default() += train_seconds;
        let n = stats.iterations_done.max(1) as f64;
        stats.source_loss = (stats.iterations_done > 0).then(|| stats.source_loss_sum / n);
        stats.target_loss = (stats.iterations_done > 0).then(|| stats.target_loss_sum / n);
        let t1 = Instant::now();
        let ev = self.eval_val()?;
        stats
            .seconds
            .insert(Phase::Eval, t1.elapsed().as_secs_f64());
        stats.miou = ev.as_ref().and_then(|e| e.miou);
        self.run.log(&RoundLine {
            confident: stats.confident,
            examples: stats.examples,
            ignored_share: stats.ignored_share,
            iteration: self.state.iteration,
            miou: stats.miou,
            phase: metrics_log::ROUND,
            round: r + 1,
            source_loss: stats.source_loss,
            target_loss: stats.target_loss,
        })?;
        self.record.rounds.push(stats);
        self.state.round += 1;
        self.state.examples_ready = false;
        self.checkpoint()?;
        // The round's network on its own, and the cache is no longer needed.
        checkpoint::save_network(
            &self.run.round_path(r + 1),
            &self.model.vs,
            &self.model.meta,
        )?;
        let _ = std::fs::remove_file(self.run.cache_path(r + 1));
        let _ = crate::plot::curves_png(
            &self.run.plot_path(),
            &self.run.read_metrics(),
            &self.record.miou_curve,
        );
        Ok(ev)
    }

    /// Writes the final model (with its run in the metadata), the record and the plot.
    fn finish(&mut self, evaluation: Option<Evaluation>) -> anyhow::Result<()> {
        let mut meta = self.model.meta.clone();
        meta.extra.retain(|k, _| k == "backbone" || k == "weights");
        let method = self.record.command.method();
        meta.extra.insert("method".into(), method.into());
        meta.extra
            .insert("source".into(), self.record.source.clone());
        if let Some(t) = &self.record.target {
            meta.extra.insert("target".into(), t.clone());
        }
        meta.extra
            .insert("settings".into(), serde_json::to_string(&self.cfg)?);
        meta.extra.insert(
            "train_size".into(),
            serde_json::to_string(&self.cfg.target_size)?,
        );
        if let Some(ev) = &evaluation {
            meta.extra
                .insert("evaluation".into(), serde_json::to_string(ev)?);
        }
        checkpoint::save_network(&self.run.model_path(), &self.model.vs, &meta)?;
        self.record.evaluation = evaluation;
        self.state.finished = true;
        let now = run::now_unix();
        self.record.ended = Some(now);
        if let Some(s) = self.record.sessions.last_mut() {
            s.ended = Some(now);
        }
        self.record.status = RunStatus::Finished;
        self.checkpoint()?;
        crate::plot::curves_png(
            &self.run.plot_path(),
            &self.run.read_metrics(),
            &self.record.miou_curve,
        )?;
        match crate::report::write(&self.run) {
            Ok(path) => tracing::info!("run report: {}", path.display()),
            Err(e) => tracing::warn!("no run report: {e:#}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fcn8s::{Fcn8sConfig, InitScheme};

    fn tiny_model() -> Model {
        let config = Fcn8sConfig {
            width: 0.125,
            classes: 19,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Fcn8s::new(&vs.root(), config, InitScheme::Scratch);
        Model {
            vs,
            net,
            meta: CheckpointMeta::new(config, InitScheme::Scratch),
            device: Device::Cpu,
        }
    }

    /// One forward pass of a batch gives every image the probabilities of its own
    /// forward pass (the rank's batches change nothing but float rounding).
    #[test]
    fn a_batch_gives_each_image_its_own_probabilities() {
        let (model, images) = crate::seeding::with_seed(11, || {
            (
                tiny_model(),
                Tensor::rand([3, 3, 32, 64], (Kind::Float, Device::Cpu)),
            )
        });
        let batched = model.probs_batch(&images);
        assert_eq!(batched.size(), [3, 19, 32, 64]);
        for k in 0..3 {
            let one = model.probs(&images.get(k));
            let diff = (batched.get(k) - &one).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "image {k}: largest difference {diff}");
            let sums = one.sum_dim_intlist(0, false, Kind::Double);
            let off = (sums - 1.0).abs().max().double_value(&[]);
            assert!(off < 1e-5, "image {k}: probabilities sum off by {off}");
        }
    }
}
