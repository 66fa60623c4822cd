//! The run configuration: one typed struct holding every setting of docs/method.md, with
//! the paper's (reference implementation's) values as defaults.
//!
//! A configuration is built from the defaults, then a TOML file (`--config run.toml`),
//! then `--set key=value` overrides and the explicit flags, in that order. Unknown keys
//! are errors (`deny_unknown_fields`), and [`Config::validate`] checks every range with
//! a message that names the key. The resolved configuration is written to the run
//! directory as `config.toml` and recorded in the final checkpoint, so every result can
//! be traced to the settings that made it.
//!
//! ```toml
//! source_size = [1280, 720]   # unset: the source kind's own (GTA5 1280x720, SYNTHIA 1280x760)
//! target_size = [1024, 512]
//! lr_weights = 1e-6
//! p_schedule = [0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40]
//! patches = 4
//! window_scales = [0.5]
//! window_placement = "random"
//! window_mask = "exact-zero"
//! focal = true
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use lse_runtime::datasets::DatasetKind;

use crate::amp::Amp;
use crate::fcn8s::InitScheme;
use crate::lse::{DegenerateGroups, WindowMask, WindowPlacement};

/// Errors of reading and checking a configuration; each names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {message}")]
    Read { path: String, message: String },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("--set `{arg}`: {message}")]
    Override { arg: String, message: String },
    #[error("setting `{key}` = {value} is out of range: {expected}")]
    Range {
        key: &'static str,
        value: String,
        expected: String,
    },
}

/// Every setting of a training or adaptation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Size `[width, height]` source images are resized to; unset: the source
    /// kind's own size (GTA5 1280x720, SYNTHIA 1280x760), see [`Config::source_size_for`].
    pub source_size: Option<[u32; 2]>,
    /// Size `[width, height]` target images are resized to (Cityscapes 1024x512).
    pub target_size: [u32; 2],
    /// Mean (B, G, R) subtracted from the 0..255 BGR input.
    pub mean_bgr: [f64; 3],
    /// Adam's betas.
    pub adam_betas: [f64; 2],
    /// Adam's epsilon.
    pub adam_eps: f64,
    /// Learning rate of the weights (1e-6 fine-tunes pretrained weights; from scratch
    /// needs larger, e.g. 1e-4).
    pub lr_weights: f64,
    /// Learning rate of the biases.
    pub lr_biases: f64,
    /// Factor the learning rates are multiplied by every `lr_decay_every` iterations.
    pub lr_decay: f64,
    /// Iterations between learning-rate decays (0: never).
    pub lr_decay_every: u64,
    /// Iterations of source-only training (`lse-train train`).
    pub source_iterations: u64,
    /// Share p of the target set taken per round; one round per entry.
    pub p_schedule: Vec<f64>,
    /// Scale-invariant examples (random windows) per confident image, K.
    pub patches: usize,
    /// Window height and width as a share of the image's (0.5: half; 1.0: no crop,
    /// plain self-training with the same thresholds); window `i` of an image takes
    /// `window_scales[i % len]`. The reference's is `[0.5]`. A single number is read as
    /// a list of one, and `window_scale` (the key of earlier runs) as this key.
    #[serde(alias = "window_scale", deserialize_with = "one_or_many")]
    pub window_scales: Vec<f64>,
    /// Where the windows fall: `random` (the reference's uniform top-left corners) or
    /// `grid` (the windows of a scale tile the image).
    pub window_placement: WindowPlacement,
    /// How the reliable mask is carried into a window: `exact-zero` (the reference's:
    /// ignored where the bilinearly upsampled mask is exactly 0), `nearest` or
    /// `any-ignored`.
    pub window_mask: WindowMask,
    /// Passes over the generated examples per round.
    pub epochs_per_round: usize,
    /// At most this many training iterations per round (0: |S| * K * epochs, as
    /// specified; a cap is for tests and demos).
    pub max_round_iterations: u64,
    /// What a group of equal entropies (`max == min`) normalises to: `keep` (the
    /// reference's NaN: such pixels and classes are kept) or `drop` (0: a degenerate
    /// boundary group keeps nothing of its class).
    pub degenerate_groups: DegenerateGroups,
    /// Pseudo-label diagnostics per round when the target's adaptation split has
    /// labels (kept share and precision, confusions, the entropy premise). They never
    /// influence selection, thresholds or training.
    pub diagnostics: bool,
    /// Target images per forward pass when a round ranks the target set (and of the
    /// window images the diagnostics measure): fewer passes, the same probabilities up
    /// to float rounding; lower it when memory is short.
    pub rank_batch: usize,
    /// Confident images per round whose windows and pseudo-labels are saved for the
    /// run report (0: none).
    pub report_samples: usize,
    /// Focal term in the target loss.
    pub focal: bool,
    /// Weight beta of the focal term.
    pub focal_beta: f64,
    /// Exponent gamma of the focal term.
    pub focal_gamma: f64,
    /// Source images per iteration (the target examples per iteration, too).
    pub batch_size: usize,
    /// Seed of every random choice (data order, windows, dropout).
    pub seed: u64,
    /// Mixed precision of the training step: `off` (float32), `bf16` (autocast to
    /// bfloat16, CPU and CUDA) or `fp16` (autocast to float16 with loss scaling, CUDA
    /// only). Checkpoints and exports stay float32 either way.
    pub amp: Amp,
    /// Older name of `amp = "fp16"`, read from existing config files (never written).
    #[serde(skip_serializing)]
    pub mixed_precision: bool,
    /// Write a resumable checkpoint every this many iterations (0: only at the end of
    /// rounds and runs).
    pub checkpoint_every: u64,
    /// Write a line to metrics.jsonl every this many iterations.
    pub log_every: u64,
    /// Evaluate on the target's val split after every round (and at the end of source
    /// training) when val labels exist.
    pub evaluate: bool,
    /// Evaluate on at most this many val images (0: all).
    pub val_limit: usize,
    /// Target split whose images are adapted to (its labels are never read).
    pub target_split: String,
    /// Target split used for evaluation.
    pub val_split: String,
    /// The network width the run expects; the `--init` checkpoint must match (unset:
    /// whatever the checkpoint has).
    pub width: Option<f64>,
    /// The initialisation the `--init` checkpoint must have been made with (unset:
    /// whatever it has; recorded either way).
    pub init: Option<InitScheme>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            source_size: None,
            target_size: [1024, 512],
            mean_bgr: [104.00698793, 116.66876762, 122.67891434],
            adam_betas: [0.9, 0.99],
            adam_eps: 1e-8,
            lr_weights: 1e-6,
            lr_biases: 2e-6,
            lr_decay: 0.1,
            lr_decay_every: 50_000,
            source_iterations: 100_000,
            p_schedule: vec![0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40],
            patches: 4,
            window_scales: vec![crate::lse::DEFAULT_WINDOW_SCALE],
            window_placement: WindowPlacement::Random,
            window_mask: WindowMask::ExactZero,
            epochs_per_round: 2,
            max_round_iterations: 0,
            degenerate_groups: DegenerateGroups::Keep,
            diagnostics: true,
            rank_batch: 8,
            report_samples: 4,
            focal: true,
            focal_beta: 0.1,
            focal_gamma: 3.0,
            batch_size: 1,
            seed: 0,
            amp: Amp::Off,
            mixed_precision: false,
            checkpoint_every: 1000,
            log_every: 10,
            evaluate: true,
            val_limit: 0,
            target_split: "train".into(),
            val_split: "val".into(),
            width: None,
            init: None,
        }
    }
}

/// One check of [`Config::validate`]: `Ok` when `ok`, else the setting's range error.
fn range(
    key: &'static str,
    value: impl ToString,
    ok: bool,
    expected: &str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Range {
            key,
            value: value.to_string(),
            expected: expected.to_string(),
        })
    }
}

impl Config {
    /// Reads a TOML file over the defaults (unknown keys are errors).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML text over the defaults; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut c: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.message().to_string(),
        })?;
        if std::mem::take(&mut c.mixed_precision) {
            c.amp = Amp::Fp16;
        }
        Ok(c)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config serialises")
    }

    /// Applies one `key=value` override. The value is read as a TOML value (`1e-4`,
    /// `true`, `[0.1, 0.2]`, `"val"`); a bare word that is not valid TOML is taken as a
    /// string. Sizes may be written `WxH`.
    pub fn set(&mut self, arg: &str) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Override {
            arg: arg.to_string(),
            message,
        };
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected key=value".into()))?;
        let (key, raw) = (key.trim(), raw.trim());
        let key = Self::current_key(key);
        let mut table = match toml::Value::try_from(&*self).expect("the config serialises") {
            toml::Value::Table(t) => t,
            _ => unreachable!("a struct serialises to a table"),
        };
        if !table.contains_key(key) && !Self::optional_keys().contains(&key) {
            let mut known: Vec<&str> = table.keys().map(String::as_str).collect();
            known.extend(Self::optional_keys());
            known.sort();
            return Err(bad(format!(
                "unknown setting `{key}` (known: {})",
                known.join(", ")
            )));
        }
        let value = parse_value(raw);
        table.insert(key.to_string(), value);
        *self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
        Ok(())
    }

    /// The key a setting has now, for the keys of earlier versions.
    fn current_key(key: &str) -> &str {
        match key {
            "window_scale" => "window_scales",
            other => other,
        }
    }

    /// Settings that may be unset (absent from the TOML form when `None`).
    fn optional_keys() -> [&'static str; 3] {
        ["width", "init", "source_size"]
    }

    /// The size source images of `kind` are resized to: `source_size` when set, else
    /// the dataset kind's own size.
    pub fn source_size_for(&self, kind: DatasetKind) -> [u32; 2] {
        self.source_size.unwrap_or(kind.layout().default_size)
    }

    /// Checks every range; the error names the setting and the accepted range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_sizes()?;
        self.validate_optimiser()?;
        self.validate_adaptation()?;
        self.validate_loop()
    }

    /// Image sizes and the mean colour.
    fn validate_sizes(&self) -> Result<(), ConfigError> {
        let size_ok = |s: [u32; 2]| (1..=16384).contains(&s[0]) && (1..=16384).contains(&s[1]);
        if let Some(s) = self.source_size {
            range(
                "source_size",
                format!("{s:?}"),
                size_ok(s),
                "each side 1..16384",
            )?;
        }
        range(
            "target_size",
            format!("{:?}", self.target_size),
            size_ok(self.target_size),
            "each side 1..16384",
        )?;
        range(
            "mean_bgr",
            format!("{:?}", self.mean_bgr),
            self.mean_bgr.iter().all(|m| (0.0..=255.0).contains(m)),
            "each in [0, 255]",
        )?;
        Ok(())
    }

    /// Adam and the learning-rate schedule.
    fn validate_optimiser(&self) -> Result<(), ConfigError> {
        let beta_ok = |b: f64| (0.0..1.0).contains(&b);
        range(
            "adam_betas",
            format!("{:?}", self.adam_betas),
            beta_ok(self.adam_betas[0]) && beta_ok(self.adam_betas[1]),
            "each in [0, 1)",
        )?;
        range(
            "adam_eps",
            self.adam_eps,
            self.adam_eps > 0.0 && self.adam_eps < 1.0,
            "in (0, 1)",
        )?;
        range(
            "lr_weights",
            self.lr_weights,
            self.lr_weights > 0.0 && self.lr_weights <= 1.0,
            "in (0, 1]",
        )?;
        range(
            "lr_biases",
            self.lr_biases,
            self.lr_biases > 0.0 && self.lr_biases <= 1.0,
            "in (0, 1]",
        )?;
        range(
            "lr_decay",
            self.lr_decay,
            self.lr_decay > 0.0 && self.lr_decay <= 1.0,
            "in (0, 1]",
        )?;
        Ok(())
    }

    /// The rounds: shares, windows, epochs, focal term, report pictures.
    fn validate_adaptation(&self) -> Result<(), ConfigError> {
        range(
            "p_schedule",
            format!("{:?}", self.p_schedule),
            !self.p_schedule.is_empty() && self.p_schedule.iter().all(|p| *p > 0.0 && *p <= 1.0),
            "a non-empty list of shares in (0, 1]",
        )?;
        range(
            "report_samples",
            self.report_samples,
            self.report_samples <= 64,
            "0..64",
        )?;
        range(
            "rank_batch",
            self.rank_batch,
            (1..=256).contains(&self.rank_batch),
            "1..256",
        )?;
        range(
            "patches",
            self.patches,
            (1..=64).contains(&self.patches),
            "1..64",
        )?;
        range(
            "window_scales",
            format!("{:?}", self.window_scales),
            !self.window_scales.is_empty()
                && self.window_scales.iter().all(|s| *s > 0.0 && *s <= 1.0),
            "a non-empty list of scales in (0, 1]",
        )?;
        range(
            "epochs_per_round",
            self.epochs_per_round,
            (1..=100).contains(&self.epochs_per_round),
            "1..100",
        )?;
        range(
            "focal_beta",
            self.focal_beta,
            (0.0..=100.0).contains(&self.focal_beta),
            "in [0, 100]",
        )?;
        range(
            "focal_gamma",
            self.focal_gamma,
            (0.0..=20.0).contains(&self.focal_gamma),
            "in [0, 20]",
        )?;
        Ok(())
    }

    /// Batches, logging, splits and the network's width.
    fn validate_loop(&self) -> Result<(), ConfigError> {
        range(
            "batch_size",
            self.batch_size,
            (1..=1024).contains(&self.batch_size),
            "1..1024",
        )?;
        range(
            "log_every",
            self.log_every,
            self.log_every >= 1,
            "at least 1",
        )?;
        range(
            "target_split",
            &self.target_split,
            !self.target_split.is_empty(),
            "a split name such as train",
        )?;
        range(
            "val_split",
            &self.val_split,
            !self.val_split.is_empty(),
            "a split name such as val",
        )?;
        if let Some(w) = self.width {
            range("width", w, w > 0.0 && w <= 4.0, "in (0, 4]")?;
        }
        Ok(())
    }

    /// The learning rates `(weights, biases)` at global iteration `it`.
    pub fn lr_at(&self, it: u64) -> (f64, f64) {
        let decays = it.checked_div(self.lr_decay_every).unwrap_or(0);
        let f = self.lr_decay.powi(decays.min(i32::MAX as u64) as i32);
        (self.lr_weights * f, self.lr_biases * f)
    }

    /// The focal term's `(beta, gamma)` when on.
    pub fn focal_params(&self) -> Option<(f64, f64)> {
        self.focal.then_some((self.focal_beta, self.focal_gamma))
    }
}

/// A list of numbers, or one number read as a list of one.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(f64),
        Many(Vec<f64>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => vec![v],
        OneOrMany::Many(v) => v,
    })
}

/// Reads an override value: TOML, `WxH` sizes, or a bare string.
fn parse_value(raw: &str) -> toml::Value {
    if let Some((w, h)) = raw.split_once(['x', 'X'])
        && let (Ok(w), Ok(h)) = (w.trim().parse::<i64>(), h.trim().parse::<i64>())
    {
        return toml::Value::Array(vec![toml::Value::Integer(w), toml::Value::Integer(h)]);
    }
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("the key was parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.p_schedule.len(), 7);
        assert!((c.p_schedule[6] - 0.40).abs() < 1e-12);
        assert_eq!((c.patches, c.epochs_per_round), (4, 2));
        assert_eq!(c.lr_at(0), (1e-6, 2e-6));
        let (w, b) = c.lr_at(50_000);
        assert!((w - 1e-7).abs() < 1e-18 && (b - 2e-7).abs() < 1e-18);
        assert_eq!(c.focal_params(), Some((0.1, 3.0)));
        assert_eq!(c.degenerate_groups, DegenerateGroups::Keep);
        // Each source kind at its own size unless set.
        assert_eq!(c.source_size_for(DatasetKind::Gta5), [1280, 720]);
        assert_eq!(c.source_size_for(DatasetKind::Synthia), [1280, 760]);
        let mut c = c;
        c.set("source_size=640x380").unwrap();
        assert_eq!(c.source_size_for(DatasetKind::Synthia), [640, 380]);
        c.set("degenerate_groups=drop").unwrap();
        assert_eq!(c.degenerate_groups, DegenerateGroups::Drop);
        assert_eq!(Config::from_toml(&c.to_toml(), "t").unwrap(), c);
    }

    #[test]
    fn window_settings_and_the_earlier_key() {
        let c = Config::default();
        assert_eq!(c.window_scales, vec![0.5]);
        assert_eq!(c.window_placement, WindowPlacement::Random);
        assert_eq!(c.window_mask, WindowMask::ExactZero);
        // An earlier run's config.toml (`window_scale = 1.0`) still reads.
        let old = Config::from_toml("window_scale = 1.0\n", "config.toml").unwrap();
        assert_eq!(old.window_scales, vec![1.0]);
        let mut c = c;
        c.set("window_scale=1.0").unwrap();
        assert_eq!(c.window_scales, vec![1.0]);
        c.set("window_scales=[0.5, 0.75]").unwrap();
        c.set("window_placement=grid").unwrap();
        c.set("window_mask=any-ignored").unwrap();
        assert_eq!(c.window_scales, vec![0.5, 0.75]);
        assert_eq!(c.window_placement, WindowPlacement::Grid);
        assert_eq!(c.window_mask, WindowMask::AnyIgnored);
        assert_eq!(Config::from_toml(&c.to_toml(), "t").unwrap(), c);
    }

    #[test]
    fn toml_round_trip_and_overrides() {
        let mut c = Config::from_toml("lr_weights = 1e-4\nfocal = false\n", "t").unwrap();
        assert_eq!(c.lr_weights, 1e-4);
        assert!(!c.focal);
        c.set("target_size=96x48").unwrap();
        assert_eq!(c.target_size, [96, 48]);
        c.set("p_schedule=[0.2, 0.3]").unwrap();
        assert_eq!(c.p_schedule, vec![0.2, 0.3]);
        c.set("val_split=val").unwrap();
        c.set("width=0.125").unwrap();
        assert_eq!(c.width, Some(0.125));
        c.set("init=scratch").unwrap();
        assert_eq!(c.init, Some(InitScheme::Scratch));
        let back = Config::from_toml(&c.to_toml(), "t").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_and_ranges_are_clear_errors() {
        let e = Config::from_toml("lr_weigths = 1e-4\n", "run.toml").unwrap_err();
        assert!(e.to_string().contains("lr_weigths"), "{e}");
        let e = Config::default().set("nope=1").unwrap_err();
        assert!(e.to_string().contains("unknown setting `nope`"), "{e}");
        let mut c = Config::default();
        c.set("window_scale=1.5").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("window_scales"), "{e}");
        let e = Config::default().set("window_mask=zero").unwrap_err();
        assert!(e.to_string().contains("exact-zero"), "{e}");
        let e = Config::default().set("patches=-1").unwrap_err();
        assert!(e.to_string().contains("patches"), "{e}");
    }

    #[test]
    fn amp_setting_and_its_older_name() {
        let mut c = Config::default();
        assert_eq!(c.amp, Amp::Off);
        c.set("amp=bf16").unwrap();
        assert_eq!(c.amp, Amp::Bf16);
        c.set("amp=\"fp16\"").unwrap();
        assert_eq!(c.amp, Amp::Fp16);
        assert_eq!(Config::from_toml(&c.to_toml(), "t").unwrap(), c);
        assert!(!c.to_toml().contains("mixed_precision"));
        let e = Config::default().set("amp=fp8").unwrap_err();
        assert!(e.to_string().contains("amp=fp8"), "{e}");
        // Config files written before `amp`: mixed_precision = true is amp = "fp16".
        let old = Config::from_toml("mixed_precision = true\n", "t").unwrap();
        assert_eq!((old.amp, old.mixed_precision), (Amp::Fp16, false));
        let old = Config::from_toml("mixed_precision = false\n", "t").unwrap();
        assert_eq!(old.amp, Amp::Off);
    }
}
