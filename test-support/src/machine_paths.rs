//! Finds absolute paths of a machine in model files: text files are scanned for any
//! absolute path ([`find_absolute_paths`]); in `.safetensors` files the JSON header
//! and in `.onnx` files the top-level strings and `metadata_props` (parsed from the
//! protobuf) are scanned the same way; and every file, binary or not, is scanned byte
//! for byte for the usual roots of machine paths (`/work/`, `/home/`, `/root/`,
//! `/tmp/`, ...), which random weight bytes do not spell.
//!
//! Used by the runtime's check of `models/` and the trainer's tests of `publish`.

use std::path::{Path, PathBuf};

use lse_runtime::provenance::find_absolute_paths;

/// Roots of machine paths looked for byte for byte in every file.
pub const MACHINE_ROOTS: &[&str] = &[
    "/work/",
    "/home/",
    "/root/",
    "/tmp/",
    "/Users/",
    "/mnt/",
    "/media/",
    "/data/",
    "/scratch/",
    "/srv/",
    "/opt/",
    "/var/",
    "/private/",
    "/builds/",
    "C:\\Users\\",
];

/// Reads a protobuf varint at `*i`.
fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of one protobuf message: `(field number, bytes)` for the
/// length-delimited ones (strings, sub-messages), the others skipped.
fn fields(b: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i)?;
        match tag & 7 {
            0 => {
                varint(b, &mut i)?;
            }
            1 => i += 8,
            5 => i += 4,
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(len).filter(|&e| e <= b.len())?;
                out.push((tag >> 3, &b[i..end]));
                i = end;
            }
            _ => return None,
        }
    }
    (i == b.len()).then_some(out)
}

/// An ONNX model's `metadata_props` as `(key, value)` pairs and its top-level strings.
pub type OnnxText = (Vec<(String, String)>, Vec<String>);

/// An ONNX ModelProto's `metadata_props` (field 14) as `(key, value)`, and its
/// top-level strings (producer name and version, domain, doc string).
pub fn onnx_text(bytes: &[u8]) -> Option<OnnxText> {
    let mut props = Vec::new();
    let mut strings = Vec::new();
    for (field, data) in fields(bytes)? {
        match field {
            2 | 3 | 4 | 6 => strings.push(String::from_utf8_lossy(data).into_owned()),
            14 => {
                let mut key = String::new();
                let mut value = String::new();
                for (f, d) in fields(data)? {
                    match f {
                        1 => key = String::from_utf8_lossy(d).into_owned(),
                        2 => value = String::from_utf8_lossy(d).into_owned(),
                        _ => {}
                    }
                }
                props.push((key, value));
            }
            _ => {}
        }
    }
    Some((props, strings))
}

/// The JSON header of a safetensors file.
pub fn safetensors_header(bytes: &[u8]) -> Option<String> {
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    Some(String::from_utf8_lossy(header).into_owned())
}

/// Every absolute path found in `path` (one line each: where and what).
pub fn machine_paths_in(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut found = Vec::new();
    let name = path.display().to_string();
    for root in MACHINE_ROOTS {
        let needle = root.as_bytes();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            let end = (at + 60).min(bytes.len());
            found.push(format!(
                "{name}: `{}` at byte {at}: {}",
                root,
                String::from_utf8_lossy(&bytes[at..end])
            ));
        }
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut texts: Vec<(String, String)> = Vec::new();
    if ext == "onnx" {
        let (props, strings) =
            onnx_text(&bytes).unwrap_or_else(|| panic!("{name} is not an ONNX protobuf"));
        assert!(
            props.iter().any(|(k, _)| k.starts_with("lse.")),
            "{name}: no lse.* metadata_props found"
        );
        for (k, v) in props {
            texts.push((format!("{name} metadata {k}"), v));
        }
        for s in strings {
            texts.push((name.clone(), s));
        }
    } else if ext == "safetensors" {
        let header = safetensors_header(&bytes)
            .unwrap_or_else(|| panic!("{name} has no safetensors header"));
        texts.push((format!("{name} header"), header));
    } else if let Ok(text) = std::str::from_utf8(&bytes) {
        texts.push((name.clone(), text.to_string()));
    }
    for (where_, text) in texts {
        for p in find_absolute_paths(&text) {
            found.push(format!("{where_}: {p}"));
        }
    }
    found
}

/// Every file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
