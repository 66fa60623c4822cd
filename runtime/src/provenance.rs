//! Provenance: what a shipped model may say about where it came from. A dataset is
//! described by a [`DatasetSummary`] (kind, folder name, split, number of images, a
//! hash of its image list), never by where it lay on a disk, and
//! [`find_absolute_paths`] finds the local paths a text still holds (`lse-train
//! publish` refuses to ship any).

use std::path::Path;
use std::str::FromStr;

use crate::datasets::{Dataset, DatasetError, DatasetKind, DatasetSpec};

/// What a shipped model says about a dataset it was trained or evaluated on: its
/// kind, its folder's name, the split (Cityscapes), the number of images and a short
/// hash of its image list, never where it lay on a disk.
///
/// Displayed as `gta5 "source" (300 images, list 1a2b3c4d)` or, for a Cityscapes
/// split, `cityscapes "target" train (300 images, list 9f8e7d6c)`; when the dataset
/// could not be opened only kind and name are known: `gta5 "source"`. The text form
/// parses back ([`DatasetSummary::from_str`]), and [`DatasetSummary::describe`] also
/// turns an old `kind:/path` spec into kind and folder name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSummary {
    pub kind: DatasetKind,
    /// The dataset folder's name (its last path component), e.g. `GTA5`.
    pub name: String,
    /// The split the images came from (Cityscapes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// The number of images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<usize>,
    /// [`list_hash`] of the image list, 16 hex digits (8 are shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
}

/// A stable 64-bit hash (FNV-1a) of a sorted list of relative file names, as 16 hex
/// digits: the names are sorted, `/`-separated and joined by `\n`. Two datasets with
/// the same image names have the same hash on every machine, wherever they lie.
pub fn list_hash<S: AsRef<str>>(names: &[S]) -> String {
    let mut names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    names.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            h = (h ^ u64::from(b'\n')).wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The last component of a folder path (`.` and `..` resolved when the folder exists).
fn folder_name(root: &Path) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
    };
    name(root)
        .or_else(|| root.canonicalize().ok().as_deref().and_then(name))
        .unwrap_or_else(|| "dataset".into())
}

impl DatasetSummary {
    /// Kind and folder name only (the dataset is not opened).
    pub fn from_spec(spec: &DatasetSpec) -> Self {
        Self {
            kind: spec.kind,
            name: folder_name(&spec.root),
            split: None,
            images: None,
            list: None,
        }
    }

    /// The summary of an opened dataset; `split` is recorded for layouts with split
    /// folders (Cityscapes).
    pub fn of(ds: &Dataset, split: &str) -> Self {
        let names: Vec<String> = ds
            .samples()
            .iter()
            .map(|s| {
                s.image
                    .strip_prefix(ds.root())
                    .unwrap_or(&s.image)
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect();
        Self {
            kind: ds.kind(),
            name: folder_name(ds.root()),
            split: ds.kind().layout().split_folders.then(|| split.to_string()),
            images: Some(ds.len()),
            list: Some(list_hash(&names)),
        }
    }

    /// Opens the dataset of `spec` (split `split`, all its images) and summarises it.
    pub fn open(spec: &DatasetSpec, split: &str) -> Result<Self, DatasetError> {
        Ok(Self::of(&Dataset::open_spec(spec, split, None)?, split))
    }

    /// Reads a dataset description as written into runs and models: a summary's text
    /// form, or an old `kind:DIR` spec (reduced to kind and folder name).
    pub fn describe(text: &str) -> Option<Self> {
        if let Ok(s) = text.parse::<Self>() {
            return Some(s);
        }
        text.parse::<DatasetSpec>()
            .ok()
            .map(|spec| Self::from_spec(&spec))
    }
}

impl std::fmt::Display for DatasetSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} \"", self.kind)?;
        for c in self.name.chars() {
            if c == '"' || c == '\\' {
                write!(f, "\\")?;
            }
            write!(f, "{c}")?;
        }
        write!(f, "\"")?;
        if let Some(s) = &self.split {
            write!(f, " {s}")?;
        }
        match (self.images, &self.list) {
            (Some(n), Some(l)) => {
                let plural = if n == 1 { "" } else { "s" };
                write!(f, " ({n} image{plural}, list {})", &l[..l.len().min(8)])
            }
            (Some(n), None) => write!(f, " ({n} image{})", if n == 1 { "" } else { "s" }),
            (None, Some(l)) => write!(f, " (list {})", &l[..l.len().min(8)]),
            (None, None) => Ok(()),
        }
    }
}

impl FromStr for DatasetSummary {
    type Err = DatasetError;
    /// Parses the text form of [`Display`](std::fmt::Display) (the hash is then the
    /// 8 digits shown).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |message: &str| DatasetError::Spec {
            spec: s.to_string(),
            message: message.to_string(),
        };
        let (kind, rest) = s
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("expected KIND \"NAME\" ..."))?;
        let kind: DatasetKind = kind.parse()?;
        let rest = rest
            .strip_prefix('"')
            .ok_or_else(|| bad("the folder name must be quoted"))?;
        let mut name = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => name.extend(chars.next().map(|(_, c)| c)),
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => name.push(c),
            }
        }
        let end = end.ok_or_else(|| bad("unterminated folder name"))?;
        let mut rest = rest[end..].trim();
        let mut split = None;
        if !rest.is_empty() && !rest.starts_with('(') {
            let (sp, r) = rest.split_once(' ').unwrap_or((rest, ""));
            split = Some(sp.to_string());
            rest = r.trim();
        }
        let (mut images, mut list) = (None, None);
        if !rest.is_empty() {
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad("expected (N images, list HASH)"))?;
            for part in inner.split(',').map(str::trim) {
                if let Some(h) = part.strip_prefix("list ") {
                    if h.is_empty() || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(bad("the list hash must be hexadecimal"));
                    }
                    list = Some(h.to_string());
                } else if let Some(n) = part
                    .strip_suffix(" images")
                    .or_else(|| part.strip_suffix(" image"))
                {
                    images = Some(n.parse().map_err(|_| bad("bad number of images"))?);
                } else {
                    return Err(bad("expected (N images, list HASH)"));
                }
            }
        }
        Ok(Self {
            kind,
            name,
            split,
            images,
            list,
        })
    }
}

/// Absolute paths of a machine found in `text`: tokens that start with `/` (or
/// `~/`, or a drive letter like `C:\`) right after the start of the text or a
/// delimiter (space, quote, `=`, `:`, `(`, `[`, `,`, `;`) and name at least two
/// path components (`/work/x`, not `/`, `/v1` or `a/b`). Used to check that
/// published models carry no local paths.
pub fn find_absolute_paths(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let is_name = |c: u8| c.is_ascii_alphanumeric() || b"._-+@%~".contains(&c);
    let is_delim = |c: u8| c.is_ascii_whitespace() || b"\"'=:([{,;<>`".contains(&c);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let at_boundary = i == 0 || is_delim(b[i - 1]);
        let rooted_here = b[i] == b'/' || (b[i] == b'~' && b.get(i + 1) == Some(&b'/'));
        let drive = b[i].is_ascii_alphabetic()
            && b.get(i + 1) == Some(&b':')
            && matches!(b.get(i + 2), Some(b'\\') | Some(b'/'))
            && b.get(i + 3).is_some_and(|&c| is_name(c));
        let start = (at_boundary && (rooted_here || drive)).then_some(i);
        let Some(s) = start else {
            i += 1;
            continue;
        };
        // Walk the token: separators and name characters.
        let mut j = s;
        while j < b.len() && (is_name(b[j]) || b[j] == b'/' || b[j] == b'\\' || b[j] == b':') {
            j += 1;
        }
        let token = &text[s..j];
        let components = token
            .split(['/', '\\'])
            .filter(|c| !c.is_empty() && *c != "~" && !c.ends_with(':'))
            .count();
        let first_sep = token.find(['/', '\\']).unwrap_or(0);
        let rooted = token.as_bytes()[first_sep..]
            .get(1)
            .is_some_and(|&c| is_name(c));
        if components >= 2 && rooted {
            out.push(token);
        }
        i = j.max(i + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_display_and_parse_back() {
        let s = DatasetSummary {
            kind: DatasetKind::Cityscapes,
            name: "city \"scapes\"".into(),
            split: Some("train".into()),
            images: Some(300),
            list: Some("1a2b3c4d5e6f7081".into()),
        };
        let text = s.to_string();
        assert_eq!(
            text,
            "cityscapes \"city \\\"scapes\\\"\" train (300 images, list 1a2b3c4d)"
        );
        let back: DatasetSummary = text.parse().unwrap();
        assert_eq!(back.name, s.name);
        assert_eq!(back.split, s.split);
        assert_eq!(back.images, Some(300));
        assert_eq!(back.list.as_deref(), Some("1a2b3c4d"));
        let spec: DatasetSpec = "gta5:/work/x/GTA5/".parse().unwrap();
        let short = DatasetSummary::from_spec(&spec);
        assert_eq!(short.to_string(), "gta5 \"GTA5\"");
        assert_eq!(short.to_string().parse::<DatasetSummary>().unwrap(), short);
        assert_eq!(DatasetSummary::describe("gta5:/work/x/GTA5"), Some(short));
        assert_eq!(DatasetSummary::describe("none"), None);
    }

    #[test]
    fn list_hash_is_stable_and_order_free() {
        assert_eq!(
            list_hash(&["b.png", "a.png"]),
            list_hash(&["a.png", "b.png"])
        );
        assert_ne!(list_hash(&["a.png"]), list_hash(&["b.png"]));
        // FNV-1a 64 of the empty list and of "a".
        assert_eq!(list_hash::<&str>(&[]), "cbf29ce484222325");
        assert_eq!(list_hash(&["a"]), "af63dc4c8601ec8c");
    }

    #[test]
    fn absolute_paths_are_found() {
        let found = |t: &str| {
            find_absolute_paths(t)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            found("gta5:/work/main/out/source"),
            ["/work/main/out/source"]
        );
        assert_eq!(found("{\"gt\":\"/home/u/x\"}"), ["/home/u/x"]);
        assert_eq!(found("see C:\\data\\gta"), ["C:\\data\\gta"]);
        assert_eq!(found("x ~/data/gta"), ["~/data/gta"]);
        for clean in [
            "gta5 \"source\" (300 images, list 1a2b3c4d)",
            "images/a.png lse/pred ../README.md",
            "a / b, GET /v1 and /",
            "km/h http://host/a/b",
        ] {
            assert!(found(clean).is_empty(), "{clean}: {:?}", found(clean));
        }
    }
}
