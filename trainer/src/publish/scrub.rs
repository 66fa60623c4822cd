//! Scrubbing the texts of a run: every recorded `kind:/path` dataset spec becomes its
//! [`DatasetSummary`]'s text, every other absolute path a relative name.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lse_runtime::datasets::DatasetSpec;
use lse_runtime::provenance::{DatasetSummary, find_absolute_paths};

/// Replaces dataset specs and absolute paths in the texts of a run.
#[derive(Debug, Default)]
pub(super) struct Scrubber {
    /// Dataset spec text as recorded → its summary's text.
    pub(super) specs: Vec<(String, String)>,
    /// Dataset roots (as recorded and where they lie now) → their recorded folder name.
    pub(super) roots: Vec<(PathBuf, String)>,
    /// The run directory (or model folder) the files come from, as given and resolved.
    pub(super) bases: Vec<PathBuf>,
}

impl Scrubber {
    /// A scrubber that knows the folder the files come from (as given and resolved).
    pub(super) fn for_base(base: &Path) -> Self {
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
    pub(super) fn longest_first(&mut self) {
        self.specs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        self.roots
            .sort_by_key(|(k, _)| std::cmp::Reverse(k.as_os_str().len()));
    }

    /// A TOML text scrubbed: unchanged text stays byte for byte; otherwise the
    /// document is parsed, its strings scrubbed, and written again.
    pub(super) fn toml_text(&self, t: &str) -> anyhow::Result<String> {
        let cleaned = self.text(t);
        if cleaned == t {
            return Ok(cleaned);
        }
        let mut doc: toml::Value = toml::from_str(t).context("parsing config.toml")?;
        self.toml(&mut doc);
        toml::to_string(&doc).context("writing config.toml")
    }

    /// A path as a relative name: the part under a dataset root (`target/gtFine/val`),
    /// the part under the folder published from (`pred`), else its last two
    /// components (`source-only/model.safetensors`).
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
    pub(super) fn text(&self, s: &str) -> String {
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
    pub(super) fn json_text(&self, text: &str) -> String {
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
    pub(super) fn meta_value(&self, v: &str) -> String {
        match serde_json::from_str::<serde_json::Value>(v) {
            Ok(doc) if doc.is_object() || doc.is_array() || doc.is_string() => self.json_text(v),
            _ => self.text(v),
        }
    }
}

fn join_rel(name: &str, rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        name.to_string()
    } else {
        format!("{name}/{}", rel.to_string_lossy().replace('\\', "/"))
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
