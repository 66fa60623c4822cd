//! `lse-train publish`: a finished run directory → a self-contained model folder
//! (`model.onnx`, `checkpoint.safetensors`, `run.json`, `config.toml`, `eval.json`)
//! that says what the model was trained on, never where it lay on a disk.
//!
//! Every `kind:/path` dataset spec of the run (run record, checkpoint metadata, hence
//! the ONNX metadata) becomes a [`DatasetSummary`] (kind, folder name, split, number
//! of images, image-list hash), recomputed by opening the dataset when it is still
//! there, else kind and folder name only. Every other absolute path (the `--init`
//! checkpoint, `lse eval`'s `pred`/`gt` folders, imported weights) becomes a relative
//! name: the part under a dataset root (`target/gtFine/val`), the part under the run
//! directory (`pred`), else its last two components (`source-only/model.safetensors`).
//! The full local paths stay in the run directory.
//!
//! The files are written into a staging folder inside `--out`, checked (the ONNX
//! export's parity check, and a scan for absolute paths in every file written), and
//! only then renamed into place, one atomic rename each; a failure leaves `--out` as
//! it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lse_runtime::datasets::{DatasetSpec, DatasetSummary, find_absolute_paths};

use lse_trainer::checkpoint;
use lse_trainer::config::Config;

const AFTER_HELP: &str = "\
Examples:
  # a finished run -> models/gta5-lse (eval.json: RUN_DIR/eval.json if `lse eval --json` wrote one there)
  lse-train publish runs/lse --out models/gta5-lse
  # the datasets moved since the run: say where they are now (their recorded names are kept)
  lse-train publish runs/lse --out models/gta5-lse --source gta5:/mnt/GTA5 --target cityscapes:/mnt/cityscapes
  # clean a model folder published before this command existed, in place
  lse-train publish --from-model models/default --out models/default

Writes model.onnx (exported with the ONNX Runtime parity check), checkpoint.safetensors,
run.json, config.toml and eval.json (when the run has an evaluation). Dataset paths become
summaries such as `gta5 \"source\" (300 images, list 1a2b3c4d)`; other absolute paths become
relative names. The command fails, leaving --out untouched, if any written file would still
hold an absolute path.";

/// Arguments of `lse-train publish`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The finished run directory (run.json, config.toml, model.safetensors; eval.json
    /// if `lse eval --json` was written there).
    #[arg(value_name = "RUN_DIR", required_unless_present = "from_model")]
    pub run_dir: Option<PathBuf>,
    /// Republish a model folder (checkpoint.safetensors, and run.json, config.toml,
    /// eval.json when present) instead of a run directory, e.g. one published before
    /// this command existed; it may be the --out folder itself.
    #[arg(long, value_name = "MODEL_DIR", conflicts_with = "run_dir")]
    pub from_model: Option<PathBuf>,
    /// The model folder to write, e.g. models/NAME (created if missing; the five files
    /// are replaced, other files are left alone).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The model's name, recorded in run.json (default: the --out folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the run's source dataset lies now, if it moved (KIND:DIR); its images are
    /// counted and hashed there, its recorded folder name is kept.
    #[arg(long, value_name = "KIND:DIR")]
    pub source: Option<DatasetSpec>,
    /// Where the run's target dataset lies now, if it moved (cityscapes:DIR).
    #[arg(long, value_name = "KIND:DIR")]
    pub target: Option<DatasetSpec>,
    /// The evaluation to ship as eval.json (`lse eval --json` or `lse-train eval
    /// --json` output); default: eval.json of the run directory (or model folder),
    /// else the run's own final evaluation from run.json.
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// Absolute part of the accepted |logit difference| in the export's parity check
    /// (max |diff| <= rtol * max |logit| + atol, rtol as `lse-train export`'s default).
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    #[command(flatten)]
    pub ort: super::OrtArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Replaces dataset specs and absolute paths in the texts of a run.
#[derive(Debug, Default)]
struct Scrubber {
    /// Dataset spec text as recorded → its summary's text.
    specs: Vec<(String, String)>,
    /// Dataset roots (as recorded and where they lie now) → their recorded folder name.
    roots: Vec<(PathBuf, String)>,
    /// The run directory (or model folder) the files come from, as given and resolved.
    bases: Vec<PathBuf>,
}

impl Scrubber {
    /// A scrubber that knows the folder the files come from (as given and resolved).
    fn for_base(base: &Path) -> Self {
        let mut bases = vec![base.to_path_buf()];
        if let Ok(c) = base.canonicalize() {
            bases.push(c);
        }
        Scrubber {
            bases,
            ..Default::default()
        }
    }

    /// Longest spec and root first, so one that contains another is replaced whole.
    fn longest_first(&mut self) {
        self.specs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        self.roots
            .sort_by_key(|(k, _)| std::cmp::Reverse(k.as_os_str().len()));
    }

    /// A TOML text scrubbed: unchanged text stays byte for byte; otherwise the
    /// document is parsed, its strings scrubbed, and written again.
    fn toml_text(&self, t: &str) -> anyhow::Result<String> {
        let cleaned = self.text(t);
        if cleaned == t {
            return Ok(cleaned);
        }
        let mut doc: toml::Value = toml::from_str(t).context("parsing config.toml")?;
        self.toml(&mut doc);
        toml::to_string(&doc).context("writing config.toml")
    }

    /// A path as a relative name (see the module documentation).
    fn path(&self, token: &str) -> String {
        let p = Path::new(token);
        for (root, name) in &self.roots {
            if let Ok(rel) = p.strip_prefix(root) {
                return join_rel(name, rel);
            }
        }
        for base in &self.bases {
            if let Ok(rel) = p.strip_prefix(base)
                && !rel.as_os_str().is_empty()
            {
                return rel.to_string_lossy().into_owned();
            }
        }
        let parts: Vec<&str> = token
            .split(['/', '\\'])
            .filter(|c| !c.is_empty() && *c != "~" && !c.ends_with(':'))
            .collect();
        parts[parts.len().saturating_sub(2)..].join("/")
    }

    /// A text with every recorded dataset spec replaced by its summary and every other
    /// absolute path by a relative name.
    fn text(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (spec, summary) in &self.specs {
            if out.contains(spec.as_str()) {
                out = out.replace(spec.as_str(), summary);
            }
        }
        // Specs that are not the run's own (e.g. in an old checkpoint's metadata).
        if (out.contains(":/") || out.contains(":~/"))
            && let Ok(spec) = out.parse::<DatasetSpec>()
            && (spec.root.is_absolute() || spec.root.starts_with("~"))
        {
            out = DatasetSummary::from_spec(&spec).to_string();
        }
        let found: Vec<String> = find_absolute_paths(&out)
            .into_iter()
            .map(str::to_string)
            .collect();
        for token in found {
            out = out.replacen(&token, &self.path(&token), 1);
        }
        out
    }

    /// Every string literal of a JSON text, scrubbed in place; everything else (key
    /// order, numbers, layout) is left byte for byte.
    fn json_text(&self, text: &str) -> String {
        let b = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let (mut i, mut last) = (0, 0);
        while i < b.len() {
            if b[i] != b'"' {
                i += 1;
                continue;
            }
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            let end = (i + 1).min(b.len());
            if let Ok(lit) = serde_json::from_str::<String>(&text[start..end]) {
                let cleaned = self.text(&lit);
                if cleaned != lit {
                    out.push_str(&text[last..start]);
                    out.push_str(&serde_json::Value::String(cleaned).to_string());
                    last = end;
                }
            }
            i = end;
        }
        out.push_str(&text[last..]);
        out
    }

    /// Every string of a TOML document, in place.
    fn toml(&self, v: &mut toml::Value) {
        match v {
            toml::Value::String(s) => *s = self.text(s),
            toml::Value::Array(a) => a.iter_mut().for_each(|x| self.toml(x)),
            toml::Value::Table(t) => t.iter_mut().for_each(|(_, x)| self.toml(x)),
            _ => {}
        }
    }

    /// A checkpoint metadata value: JSON documents are scrubbed inside their string
    /// literals, plain strings as text.
    fn meta_value(&self, v: &str) -> String {
        match serde_json::from_str::<serde_json::Value>(v) {
            Ok(doc) if doc.is_object() || doc.is_array() || doc.is_string() => self.json_text(v),
            _ => self.text(v),
        }
    }
}

/// The top-level members of a JSON object text: `(key, start, end)`, from the key's
/// opening quote to just after the value. `None` if the text is not an object.
fn members(text: &str) -> Option<Vec<(String, usize, usize)>> {
    let b = text.as_bytes();
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // Just past the string literal starting at `i`.
    let string_end = |mut i: usize| {
        i += 1;
        while i < b.len() && b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        (i < b.len()).then_some(i + 1)
    };
    let mut out = Vec::new();
    let mut i = 0;
    ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        ws(&mut i);
        match b.get(i)? {
            b'}' => return Some(out),
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let start = i;
        let key_end = string_end(i)?;
        let key: String = serde_json::from_str(&text[start..key_end]).ok()?;
        i = key_end;
        ws(&mut i);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        let mut depth = 0usize;
        loop {
            match b.get(i)? {
                b'"' => {
                    i = string_end(i)?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        let mut end = i;
        while end > start && b[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        out.push((key, start, end));
    }
}

/// The raw text of the top-level member `key`'s value.
fn member_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let (_, start, end) = members(text)?.into_iter().find(|(k, ..)| k == key)?;
    let colon = start + text[start..end].find(':')?;
    Some(text[colon + 1..end].trim())
}

/// The object text with its top-level member `key` set to `value` (written last,
/// pretty, indented like `serde_json::to_string_pretty`'s members).
fn set_member(text: &str, key: &str, value: &serde_json::Value) -> anyhow::Result<String> {
    let ms = members(text).context("run.json is not a JSON object")?;
    let mut text = text.to_string();
    if let Some(pos) = ms.iter().position(|(k, ..)| k == key) {
        // Cut from the end of the previous member (or the start of the next one).
        let (from, to) = match (pos.checked_sub(1), ms.get(pos + 1)) {
            (Some(prev), _) => (ms[prev].2, ms[pos].2),
            (None, Some(next)) => (ms[pos].1, next.1),
            (None, None) => (ms[pos].1, ms[pos].2),
        };
        text.replace_range(from..to, "");
    }
    let close = text.rfind('}').context("run.json is not a JSON object")?;
    let body = text[..close].trim_end().to_string();
    let pretty = serde_json::to_string_pretty(value)?.replace('\n', "\n  ");
    let sep = if body.ends_with('{') { "" } else { "," };
    let key = serde_json::Value::String(key.to_string());
    Ok(format!("{body}{sep}\n  {key}: {pretty}\n}}\n"))
}

/// A JSON value's text, taken out of a pretty document where it was indented by two.
fn dedent(value: &str) -> String {
    let mut s = value.replace("\n  ", "\n");
    s.push('\n');
    s
}

fn join_rel(name: &str, rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        name.to_string()
    } else {
        format!("{name}/{}", rel.to_string_lossy().replace('\\', "/"))
    }
}

/// Absolute paths left in a text, with the file they are in.
fn leftovers(file: &str, text: &str, found: &mut Vec<String>) {
    for p in find_absolute_paths(text) {
        found.push(format!("{file}: {p}"));
    }
}

/// Where a model is published from.
struct Inputs {
    /// The folder (run directory or model folder).
    base: PathBuf,
    checkpoint: PathBuf,
    /// run.json: its text (rewritten in place, so key order and numbers stay) and
    /// its parsed form (to read from).
    record: Option<(String, serde_json::Value)>,
    config: Option<String>,
    /// The evaluation's JSON text.
    eval: Option<String>,
}

/// A JSON file's text and its parsed form.
fn read_json(path: &Path) -> anyhow::Result<(String, serde_json::Value)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok((text, v))
}

fn read_inputs(a: &Args) -> anyhow::Result<Inputs> {
    let (base, checkpoint, need_record) = match (&a.run_dir, &a.from_model) {
        (Some(run), None) => (run.clone(), run_checkpoint(run)?, true),
        (None, Some(dir)) => (dir.clone(), model_checkpoint(dir)?, false),
        _ => anyhow::bail!("give either RUN_DIR or --from-model MODEL_DIR"),
    };
    let record = read_record(&base.join("run.json"), need_record)?;
    let config_path = base.join("config.toml");
    let config = if config_path.is_file() {
        Some(
            std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
    } else {
        None
    };
    let eval = match &a.eval {
        Some(p) => Some(read_json(p)?.0),
        None if base.join("eval.json").is_file() => Some(read_json(&base.join("eval.json"))?.0),
        None => record
            .as_ref()
            .filter(|(_, r)| !r["evaluation"].is_null())
            .and_then(|(text, _)| member_value(text, "evaluation"))
            .map(dedent),
    };
    Ok(Inputs {
        base,
        checkpoint,
        record,
        config,
        eval,
    })
}

/// A finished run directory's model.safetensors, or why it has none.
fn run_checkpoint(run: &Path) -> anyhow::Result<PathBuf> {
    let ckpt = run.join("model.safetensors");
    if run.join("run.json").is_file() && ckpt.is_file() {
        return Ok(ckpt);
    }
    if run.join("checkpoint.safetensors").is_file() {
        anyhow::bail!(
            "{} has no model.safetensors but a checkpoint.safetensors: it looks like a \
             model folder; republish it with --from-model {}",
            run.display(),
            run.display()
        );
    }
    if !run.join("run.json").is_file() {
        anyhow::bail!(
            "{} is not a run directory (run.json expected)",
            run.display()
        );
    }
    anyhow::bail!(
        "{} has no model.safetensors: the run has not finished (continue it with \
         `lse-train train|adapt --resume {}`)",
        run.display(),
        run.display()
    )
}

/// A model folder's checkpoint.safetensors.
fn model_checkpoint(dir: &Path) -> anyhow::Result<PathBuf> {
    let ckpt = dir.join("checkpoint.safetensors");
    if !ckpt.is_file() {
        anyhow::bail!(
            "{} is not a model folder (checkpoint.safetensors expected)",
            dir.display()
        );
    }
    Ok(ckpt)
}

/// run.json's text and value: required (and checked to be a run record) for a run
/// directory, optional for a model folder.
fn read_record(
    record_path: &Path,
    need_record: bool,
) -> anyhow::Result<Option<(String, serde_json::Value)>> {
    if !need_record && !record_path.is_file() {
        return Ok(None);
    }
    let (text, r) = read_json(record_path)?;
    if need_record {
        // A run record must be one: fail early on a foreign run.json.
        serde_json::from_value::<lse_trainer::run::RunRecord>(r.clone())
            .with_context(|| format!("{} is not a run record", record_path.display()))?;
        if r["status"].as_str() != Some("finished") {
            tracing::warn!(
                status = r["status"].as_str().unwrap_or("?"),
                "the run's status is not `finished`; publishing its model.safetensors anyway"
            );
        }
    }
    if !r.is_object() {
        anyhow::bail!("{} is not a JSON object", record_path.display());
    }
    Ok(Some((text, r)))
}

/// The summary of one recorded dataset, and its scrubbing entries.
fn summarise(
    what: &str,
    recorded: &str,
    now: Option<&DatasetSpec>,
    split: &str,
    prior: Option<DatasetSummary>,
    scrub: &mut Scrubber,
) -> Option<DatasetSummary> {
    // A spec as recorded by the run, or the summary of a model published before
    // (kept as it is unless told where the dataset lies now).
    let (fallback, recorded_root) = match recorded.parse::<DatasetSpec>() {
        Ok(spec) => (DatasetSummary::from_spec(&spec), Some(spec.root)),
        Err(_) => {
            let known = recorded.parse::<DatasetSummary>().ok()?;
            if now.is_none() {
                // The structured form kept in run.json has the full list hash.
                return Some(prior.filter(|p| p.to_string() == recorded).unwrap_or(known));
            }
            let short = DatasetSummary {
                split: None,
                images: None,
                list: None,
                ..known
            };
            (short, None)
        }
    };
    let location = match (now, &recorded_root) {
        (Some(n), _) => {
            if n.kind != fallback.kind {
                tracing::warn!(
                    "--{what} is a {} dataset but the run recorded a {} one",
                    n.kind,
                    fallback.kind
                );
            }
            Some(n.clone())
        }
        (None, Some(root)) => Some(DatasetSpec {
            kind: fallback.kind,
            root: root.clone(),
        }),
        (None, None) => None,
    };
    let opened = location
        .as_ref()
        .map(|l| DatasetSummary::open(l, split))
        .transpose();
    let summary = match opened {
        Ok(Some(mut s)) => {
            s.name = fallback.name.clone();
            s
        }
        Ok(None) => fallback.clone(),
        Err(e) => {
            tracing::warn!(
                "the {what} {} cannot be opened ({e}); the model records its kind and folder \
                 name only (give --{what} KIND:DIR where it lies now)",
                fallback
            );
            fallback.clone()
        }
    };
    scrub
        .specs
        .push((recorded.to_string(), summary.to_string()));
    for root in [recorded_root.as_ref(), now.map(|n| &n.root)]
        .into_iter()
        .flatten()
    {
        scrub.roots.push((root.clone(), fallback.name.clone()));
        if let Ok(c) = root.canonicalize() {
            scrub.roots.push((c, fallback.name.clone()));
        }
    }
    Some(summary)
}

/// Removes the staging folder unless the publication went through.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The run's datasets, as summaries.
struct Datasets {
    source: Option<DatasetSummary>,
    target: Option<DatasetSummary>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let inputs = read_inputs(&a)?;
    if a.run_dir.is_some() && same_dir(&inputs.base, &a.out) {
        anyhow::bail!(
            "--out must be a model folder, not the run directory {}",
            inputs.base.display()
        );
    }
    let mut meta = checkpoint::read_meta(&inputs.checkpoint)?;
    let (_, tensors) = checkpoint::read_safetensors(&inputs.checkpoint)?;
    let (datasets, scrub) = summarise_datasets(&a, &inputs, &meta);
    // The checkpoint's metadata (and so the ONNX metadata).
    meta.extra.remove("state");
    meta.extra = meta
        .extra
        .iter()
        .map(|(k, v)| (k.clone(), scrub.meta_value(v)))
        .collect();
    let name = model_name(&a, &inputs);
    let files = published_files(&inputs, &scrub, &name, &datasets)?;
    let export = stage_and_move(&a, &meta, tensors, &files)?;
    let mut names: Vec<&str> = vec!["checkpoint.safetensors", "model.onnx"];
    names.extend(files.keys());
    print_report(&a, &name, &names, &datasets, &export)
}

/// The command that produced the checkpoint: as recorded, else guessed from the
/// checkpoint's method.
fn run_command(inputs: &Inputs, meta: &checkpoint::CheckpointMeta) -> String {
    inputs
        .record
        .as_ref()
        .and_then(|(_, r)| r["command"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            if meta.extra.get("method").map(String::as_str) == Some("lse") {
                "adapt".into()
            } else {
                "train".into()
            }
        })
}

/// The target's split the run used: adaptation reads the target split, a
/// source-only run only evaluates on the val split.
fn target_split(inputs: &Inputs, command: &str) -> String {
    let config = inputs.config.as_deref().and_then(|t| {
        Config::from_toml(t, "config.toml")
            .map_err(|e| tracing::warn!("config.toml: {e}; splits train/val assumed"))
            .ok()
    });
    let cfg = config.unwrap_or_default();
    if command == "adapt" {
        cfg.target_split
    } else {
        cfg.val_split
    }
}

/// The source and target summaries, and the scrubber that replaces their specs and
/// every other absolute path of the run.
fn summarise_datasets(
    a: &Args,
    inputs: &Inputs,
    meta: &checkpoint::CheckpointMeta,
) -> (Datasets, Scrubber) {
    // The datasets: as recorded in the run (else in the checkpoint's metadata).
    let recorded = |key: &str| -> Option<String> {
        inputs
            .record
            .as_ref()
            .and_then(|(_, r)| r[key].as_str().map(str::to_string))
            .or_else(|| meta.extra.get(key).cloned())
    };
    // A model published before keeps its summaries' structured form in run.json.
    let prior = |role: &str| {
        inputs.record.as_ref().and_then(|(_, r)| {
            serde_json::from_value::<DatasetSummary>(r["published"]["datasets"][role].clone()).ok()
        })
    };
    let split = target_split(inputs, &run_command(inputs, meta));
    let mut scrub = Scrubber::for_base(&inputs.base);
    let source = recorded("source").and_then(|s| {
        let now = a.source.as_ref();
        summarise("source", &s, now, "train", prior("source"), &mut scrub)
    });
    let target = recorded("target").and_then(|s| {
        let now = a.target.as_ref();
        summarise("target", &s, now, &split, prior("target"), &mut scrub)
    });
    // Specs recorded in the checkpoint that differ from the record's (same datasets).
    for (key, summary) in [("source", &source), ("target", &target)] {
        if let (Some(v), Some(s)) = (meta.extra.get(key), summary)
            && !scrub.specs.iter().any(|(k, _)| k == v)
            && v.parse::<DatasetSpec>().is_ok()
        {
            scrub.specs.push((v.clone(), s.to_string()));
        }
    }
    scrub.longest_first();
    (Datasets { source, target }, scrub)
}

/// The model's name: `--name`, else the --out folder's name.
fn model_name(a: &Args, inputs: &Inputs) -> String {
    a.name.clone().unwrap_or_else(|| {
        a.out
            .file_name()
            .or_else(|| inputs.base.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    })
}

/// The text files to publish (run.json, and config.toml and eval.json when there
/// are any), scrubbed; the JSON ones checked to still parse.
fn published_files(
    inputs: &Inputs,
    scrub: &Scrubber,
    name: &str,
    d: &Datasets,
) -> anyhow::Result<BTreeMap<&'static str, Vec<u8>>> {
    let published = serde_json::json!({
        "name": name,
        "by": format!("lse-train publish {}", lse_runtime::VERSION),
        "datasets": {"source": d.source, "target": d.target},
    });
    let record_text = match &inputs.record {
        Some((text, _)) => set_member(&scrub.json_text(text), "published", &published)?,
        None => {
            serde_json::to_string_pretty(&serde_json::json!({ "published": published }))? + "\n"
        }
    };
    let mut files: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    files.insert("run.json", record_text.into_bytes());
    if let Some(t) = &inputs.config {
        files.insert("config.toml", scrub.toml_text(t)?.into_bytes());
    }
    if let Some(e) = &inputs.eval {
        files.insert("eval.json", scrub.json_text(e).into_bytes());
    }
    for f in ["run.json", "eval.json"] {
        if let Some(bytes) = files.get(f) {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .with_context(|| format!("the rewritten {f} is not valid JSON"))?;
        }
    }
    Ok(files)
}

/// Writes checkpoint, model and text files into a staging folder inside --out,
/// checks them, then renames each into place. Returns the export's report.
fn stage_and_move(
    a: &Args,
    meta: &checkpoint::CheckpointMeta,
    tensors: Vec<(String, tch::Tensor)>,
    files: &BTreeMap<&'static str, Vec<u8>>,
) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let staging = Staging(a.out.join(format!(".publish-{}.tmp", std::process::id())));
    let _ = std::fs::remove_dir_all(&staging.0);
    std::fs::create_dir_all(&staging.0)
        .with_context(|| format!("creating {}", staging.0.display()))?;
    let stage = |f: &str| staging.0.join(f);
    checkpoint::save(&stage("checkpoint.safetensors"), meta, &tensors)?;
    drop(tensors);
    let export = lse_trainer::export::export_checked(
        &stage("checkpoint.safetensors"),
        &stage("model.onnx"),
        &lse_trainer::export::ExportOptions {
            train_size: None,
            check: true,
            tolerance: lse_trainer::onnx::Tolerance {
                atol: a.tolerance.into(),
                ..Default::default()
            },
            ort_lib: a.ort.ort_lib.clone(),
        },
    )
    .context("exporting the model")?;
    for (f, bytes) in files {
        lse_trainer::run::write_atomic(&stage(f), bytes)?;
    }
    refuse_absolute_paths(files, &stage("checkpoint.safetensors"), &a.out)?;
    for f in ["checkpoint.safetensors", "model.onnx"]
        .into_iter()
        .chain(files.keys().copied())
    {
        std::fs::rename(stage(f), a.out.join(f))
            .with_context(|| format!("moving {f} into {}", a.out.display()))?;
    }
    if !files.contains_key("eval.json") {
        // A stale evaluation of another model must not stay beside this one.
        let _ = std::fs::remove_file(a.out.join("eval.json"));
    }
    Ok(export)
}

/// Fails if an absolute path remains in the text files, the staged checkpoint's
/// metadata or the model's metadata (written from the same checkpoint metadata).
fn refuse_absolute_paths(
    files: &BTreeMap<&'static str, Vec<u8>>,
    staged_checkpoint: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for (f, bytes) in files {
        leftovers(f, &String::from_utf8_lossy(bytes), &mut found);
    }
    let written = checkpoint::read_meta(staged_checkpoint)?;
    for (k, v) in &written.extra {
        leftovers(&format!("checkpoint.safetensors lse.{k}"), v, &mut found);
    }
    for (k, v) in lse_trainer::export::model_meta(&written, None)?.to_props() {
        leftovers(&format!("model.onnx {k}"), &v, &mut found);
    }
    if !found.is_empty() {
        anyhow::bail!(
            "absolute paths would remain in the published model ({}); nothing was written to {}",
            found.join("; "),
            out.display()
        );
    }
    Ok(())
}

fn print_report(
    a: &Args,
    name: &str,
    names: &[&str],
    d: &Datasets,
    export: &serde_json::Value,
) -> anyhow::Result<()> {
    if a.json {
        let report = serde_json::json!({
            "out": a.out,
            "name": name,
            "files": names,
            "source": d.source.as_ref().map(ToString::to_string),
            "target": d.target.as_ref().map(ToString::to_string),
            "datasets": {"source": d.source, "target": d.target},
            "parity": export.get("parity"),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("published {} ({})", a.out.display(), names.join(", "));
        if let Some(s) = &d.source {
            println!("  source  {s}");
        }
        if let Some(t) = &d.target {
            println!("  target  {t}");
        }
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber() -> Scrubber {
        Scrubber {
            specs: vec![(
                "cityscapes:/work/demo/data/target".into(),
                "cityscapes \"target\" train (3 images, list 01234567)".into(),
            )],
            roots: vec![(PathBuf::from("/work/demo/data/target"), "target".into())],
            bases: vec![PathBuf::from("/work/demo/lse")],
        }
    }

    #[test]
    fn specs_and_paths_become_names() {
        let s = scrubber();
        assert_eq!(
            s.text("cityscapes:/work/demo/data/target"),
            "cityscapes \"target\" train (3 images, list 01234567)"
        );
        assert_eq!(
            s.text("/work/demo/data/target/gtFine/val"),
            "target/gtFine/val"
        );
        assert_eq!(s.text("/work/demo/lse/pred"), "pred");
        assert_eq!(
            s.text("/work/demo/source-only/model.safetensors"),
            "source-only/model.safetensors"
        );
        assert_eq!(s.text("gta5:/elsewhere/GTA5"), "gta5 \"GTA5\"");
        assert_eq!(s.text("scratch"), "scratch");
        let doc = "{\n  \"gt\": \"/work/demo/data/target/gtFine/val\",\n  \"miou\": 0.22772526780088218,\n  \"n\": [1, \"/x/y/z\"]\n}";
        assert_eq!(
            s.json_text(doc),
            "{\n  \"gt\": \"target/gtFine/val\",\n  \"miou\": 0.22772526780088218,\n  \"n\": [1, \"y/z\"]\n}"
        );
        // A summary's quotes are escaped inside JSON.
        let spec = "{\"target\": \"cityscapes:/work/demo/data/target\"}";
        let v: serde_json::Value = serde_json::from_str(&s.json_text(spec)).unwrap();
        assert_eq!(
            v["target"],
            "cityscapes \"target\" train (3 images, list 01234567)"
        );
    }

    #[test]
    fn members_are_found_replaced_and_appended() {
        let text =
            "{\n  \"a\": {\"x\": [1, \"}\"]},\n  \"published\": {\"old\": 1},\n  \"z\": 2.50\n}\n";
        let ms = members(text).unwrap();
        assert_eq!(
            ms.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
            ["a", "published", "z"]
        );
        assert_eq!(member_value(text, "a"), Some("{\"x\": [1, \"}\"]}"));
        let out = set_member(text, "published", &serde_json::json!({"new": 2})).unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": {\"x\": [1, \"}\"]},\n  \"z\": 2.50,\n  \"published\": {\n    \"new\": 2\n  }\n}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["published"]["new"], 2);
        assert_eq!(
            set_member("{}", "k", &serde_json::json!(1)).unwrap(),
            "{\n  \"k\": 1\n}\n"
        );
        assert_eq!(dedent("{\n    \"a\": 1\n  }"), "{\n  \"a\": 1\n}\n");
    }

    #[test]
    fn metadata_json_is_kept_verbatim_when_clean() {
        let s = scrubber();
        let settings = r#"{"b":1,"a":[0.1,1e-8]}"#;
        assert_eq!(s.meta_value(settings), settings);
        assert_eq!(
            s.meta_value(r#"{"init":"/work/demo/init.safetensors","lr":1e-8}"#),
            r#"{"init":"demo/init.safetensors","lr":1e-8}"#
        );
        assert_eq!(s.meta_value("19"), "19");
    }
}
