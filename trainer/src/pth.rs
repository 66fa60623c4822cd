//! Reader for PyTorch checkpoints saved with `torch.save(model.state_dict(), "x.pth")`.
//!
//! Since PyTorch 1.6 `torch.save` writes a zip archive:
//!
//! ```text
//! <archive>/data.pkl        the pickled object (protocol 2 by default)
//! <archive>/data/<key>      raw bytes of each storage, in the machine's byte order
//! <archive>/byteorder       "little" or "big" (absent in files from older versions)
//! <archive>/version, <archive>/.format_version, ...
//! ```
//!
//! tch's own pickle reader rejects the `OrderedDict` that `state_dict()` returns, so
//! this module runs a small pickle virtual machine over `data.pkl` that knows the
//! subset of the protocol that state dicts use: containers, scalars, strings,
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` / `_v3`,
//! `_rebuild_parameter`, `torch._tensor._rebuild_from_type_v2` and persistent ids
//! of the form `('storage', torch.FloatStorage, key, location, numel)`. Every other
//! class is kept as an opaque object, so checkpoints that also carry an epoch
//! counter, optimizer state or arbitrary python objects still load.
//!
//! A state dict nested one or more levels down (`{"state_dict": sd, "epoch": 3}`,
//! `{"model": sd, "optimizer": ...}`) is found and unwrapped. Tensors are returned on
//! the CPU, contiguous, in the order of the file. Malformed input gives a
//! [`PthError`] naming the file; nothing here panics on bad data.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Kind, Tensor};

/// The one-line conversion that turns a legacy (pre-zip) checkpoint into one this
/// reader understands.
pub const RESAVE_COMMAND: &str = "python -c \"import torch; sd=torch.load('in.pth', map_location='cpu'); torch.save(sd, 'out.pth')\"";

/// Largest `data.pkl` accepted (the pickle of a state dict is a few hundred bytes per
/// tensor).
const MAX_PICKLE_BYTES: u64 = 1 << 30;
/// A view that reads more elements than its storage holds (overlapping strides, such
/// as an `expand`ed tensor) is materialized only up to this many bytes.
const MAX_OVERLAP_VIEW_BYTES: u64 = 1 << 30;
/// How deep nested dicts are searched for the state dict.
const MAX_UNWRAP_DEPTH: usize = 4;
/// Keys that usually hold the model weights in a training checkpoint, in order of
/// preference when several nested dicts contain tensors.
const PREFERRED_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "net",
    "network",
    "weights",
    "params",
];

/// Errors of [`load_state_dict`]. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The file could not be opened or read.
    #[error("{}: cannot read file: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pre-1.6 (non-zip) `torch.save` file.
    #[error(
        "{}: legacy (pre-zip, PyTorch < 1.6 style) checkpoint format is not supported; re-save it with a current PyTorch: {}",
        .path.display(),
        RESAVE_COMMAND
    )]
    Legacy { path: PathBuf },
    /// Not a zip archive, or a damaged one.
    #[error("{}: not a readable PyTorch zip checkpoint: {reason}", .path.display())]
    Archive { path: PathBuf, reason: String },
    /// `data.pkl` is malformed or uses something this reader does not implement.
    #[error("{}: bad pickle data in {entry} at byte {offset}: {reason}", .path.display())]
    Pickle {
        path: PathBuf,
        entry: String,
        offset: usize,
        reason: String,
    },
    /// The unpickled object is not (and does not contain) a state dict.
    #[error("{}: {reason}", .path.display())]
    Structure { path: PathBuf, reason: String },
    /// One tensor cannot be rebuilt (bad sizes, missing or short storage, unsupported
    /// dtype...).
    #[error("{}: tensor '{key}': {reason}", .path.display())]
    Tensor {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// libtorch refused to create a tensor.
    #[error("{}: tensor '{key}': libtorch: {source}", .path.display())]
    Torch {
        path: PathBuf,
        key: String,
        #[source]
        source: tch::TchError,
    },
}

/// Reads the state dict of a PyTorch zip checkpoint: `(name, tensor)` pairs in file
/// order, CPU tensors, contiguous. Non-tensor entries are skipped; a state dict
/// nested in a training checkpoint (`{"state_dict": ...}`, `{"model": ...}`) is
/// unwrapped.
pub fn load_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    let io_err = |source| PthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let archive_err = |reason: String| PthError::Archive {
        path: path.to_path_buf(),
        reason,
    };
    let structure_err = |reason: String| PthError::Structure {
        path: path.to_path_buf(),
        reason,
    };

    let mut file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut head = Vec::with_capacity(512);
    (&mut file)
        .take(512)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    if !head.starts_with(b"PK\x03\x04") {
        if is_legacy_torch_file(&head) {
            return Err(PthError::Legacy {
                path: path.to_path_buf(),
            });
        }
        let reason = if head.is_empty() {
            "the file is empty".to_string()
        } else {
            "no zip signature at the start of the file".to_string()
        };
        return Err(archive_err(reason));
    }
    // ZipArchive seeks to the central directory itself.
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| archive_err(format!("cannot read zip directory: {e}")))?;

    let prefix = find_archive_prefix(&zip).map_err(structure_err)?;
    let byteorder = read_byteorder(&mut zip, &prefix, file_len).map_err(archive_err)?;
    let pkl_name = format!("{prefix}/data.pkl");
    let pickle = read_entry(&mut zip, &pkl_name, None, file_len.min(MAX_PICKLE_BYTES))
        .map_err(archive_err)?;

    let top = unpickle(&pickle).map_err(|e| PthError::Pickle {
        path: path.to_path_buf(),
        entry: pkl_name.clone(),
        offset: e.offset,
        reason: e.reason,
    })?;
    let entries = select_state_dict(&top).map_err(structure_err)?;
    drop(top);

    let mut loader = |key: &str, nbytes: u64| -> Result<Vec<u8>, String> {
        let name = format!("{prefix}/data/{key}");
        read_entry(&mut zip, &name, Some(nbytes), file_len)
    };
    materialize_all(&entries, byteorder, &mut loader).map_err(|e| match e {
        MaterializeError::Tensor { key, reason } => PthError::Tensor {
            path: path.to_path_buf(),
            key,
            reason,
        },
        MaterializeError::Torch { key, source } => PthError::Torch {
            path: path.to_path_buf(),
            key,
            source,
        },
    })
}

/// Pre-1.6 files start with a pickled magic number (protocol 2: `\x80\x02\x8a\x0a`),
/// and the even older format is a tar archive.
fn is_legacy_torch_file(head: &[u8]) -> bool {
    head.starts_with(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")
        || (head.len() >= 2 && head[0] == 0x80 && head[1] <= 5)
        || head.get(257..262) == Some(b"ustar".as_slice())
}

/// The archive's top folder: torch names it after the file (`archive/` in recent
/// versions); there must be exactly one `<prefix>/data.pkl`.
fn find_archive_prefix<R: std::io::Read + std::io::Seek>(
    zip: &zip::ZipArchive<R>,
) -> Result<String, String> {
    let mut prefixes = Vec::new();
    let mut torchscript = false;
    for name in zip.file_names_raw() {
        if let Some(prefix) = name.strip_suffix(b"/data.pkl")
            && !prefix.is_empty()
            && !prefix.contains(&b'/')
        {
            prefixes.push(String::from_utf8_lossy(prefix).into_owned());
        }
        if name.ends_with(b"constants.pkl") || name.windows(6).any(|w| w == b"/code/") {
            torchscript = true;
        }
    }
    match prefixes.len() {
        1 => Ok(prefixes.pop().unwrap_or_default()),
        0 if torchscript => Err(
            "this is a TorchScript archive (torch.jit.save), not a state dict; in python, \
             save `torch.jit.load(path).state_dict()` with torch.save instead"
                .to_string(),
        ),
        0 => Err(
            "the zip archive has no <archive>/data.pkl record; is it a torch.save file?"
                .to_string(),
        ),
        _ => Err(format!(
            "the zip archive has several data.pkl records ({}); expected one",
            prefixes.join(", ")
        )),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByteOrder {
    Little,
    Big,
}

fn read_byteorder<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    prefix: &str,
    file_len: u64,
) -> Result<ByteOrder, String> {
    let name = format!("{prefix}/byteorder");
    if zip.index_for_name(&name).is_none() {
        // Written since PyTorch 1.10; older files come from little-endian machines.
        return Ok(ByteOrder::Little);
    }
    let bytes = read_entry(zip, &name, None, file_len.min(64))?;
    match bytes.trim_ascii() {
        b"little" => Ok(ByteOrder::Little),
        b"big" => Ok(ByteOrder::Big),
        other => Err(format!(
            "{name} says {:?}; expected \"little\" or \"big\"",
            String::from_utf8_lossy(other)
        )),
    }
}

/// Reads a zip entry: all of it (`want == None`, at most `limit` bytes), or its
/// first `want` bytes, which must exist.
fn read_entry<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    want: Option<u64>,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let entry = zip
        .by_name(name)
        .map_err(|e| format!("archive entry {name}: {e}"))?;
    let size = entry.size();
    let n = match want {
        Some(want) if want > size => {
            return Err(format!(
                "archive entry {name} holds {size} bytes but {want} are needed"
            ));
        }
        Some(want) => want,
        None => size,
    };
    if n > limit {
        return Err(format!(
            "archive entry {name} claims {n} bytes, more than the {limit} allowed (damaged file?)"
        ));
    }
    let cap = usize::try_from(n).map_err(|_| format!("archive entry {name} is too large"))?;
    let mut buf = Vec::with_capacity(cap);
    entry
        .take(n)
        .read_to_end(&mut buf)
        .map_err(|e| format!("archive entry {name}: {e}"))?;
    if buf.len() as u64 != n {
        return Err(format!(
            "archive entry {name} is truncated: read {} of {n} bytes",
            buf.len()
        ));
    }
    Ok(buf)
}

// ---------------------------------------------------------------------------------
// Pickle values
// ---------------------------------------------------------------------------------

/// Tuple / list elements. Dropping is iterative, so a deeply nested pickle cannot
/// overflow the stack.
#[derive(Default)]
struct Items(Vec<Value>);

impl Drop for Items {
    fn drop(&mut self) {
        drop_iteratively(std::mem::take(&mut self.0));
    }
}

/// A python dict: insertion-ordered entries; string keys are indexed so that a key
/// set twice keeps its first position, as in python.
#[derive(Default)]
struct DictItems {
    entries: Vec<(Value, Value)>,
    index: HashMap<Rc<str>, usize>,
}

impl DictItems {
    fn set(&mut self, key: Value, value: Value) {
        if let Value::Str(s) = &key {
            if let Some(&i) = self.index.get(s) {
                self.entries[i].1 = value;
                return;
            }
            self.index.insert(s.clone(), self.entries.len());
        }
        self.entries.push((key, value));
    }
}

impl Drop for DictItems {
    fn drop(&mut self) {
        let mut values = Vec::with_capacity(self.entries.len() * 2);
        for (k, v) in self.entries.drain(..) {
            values.push(k);
            values.push(v);
        }
        drop_iteratively(values);
    }
}

fn drop_iteratively(mut stack: Vec<Value>) {
    while let Some(value) = stack.pop() {
        match value {
            Value::Tuple(mut rc) => {
                if let Some(items) = Rc::get_mut(&mut rc) {
                    stack.append(&mut items.0);
                }
            }
            Value::List(mut rc) => {
                if let Some(cell) = Rc::get_mut(&mut rc) {
                    stack.append(&mut cell.get_mut().0);
                }
            }
            Value::Dict(mut rc) => {
                if let Some(cell) = Rc::get_mut(&mut rc) {
                    for (k, v) in cell.get_mut().entries.drain(..) {
                        stack.push(k);
                        stack.push(v);
                    }
                }
            }
            _ => {}
        }
        // `value`'s container, if any, is empty now and drops without recursion.
    }
}

/// A storage named by a persistent id.
#[derive(Debug)]
struct StorageRef {
    key: String,
    /// Element type; `None` for storage types that tch cannot represent.
    kind: Option<Kind>,
    /// Python name of the storage type, for messages.
    type_name: String,
    elem_size: u64,
    /// Number of elements (bytes for `UntypedStorage`).
    numel: u64,
}

impl StorageRef {
    fn nbytes(&self) -> Option<u64> {
        self.numel.checked_mul(self.elem_size)
    }
}

/// A tensor as described by `_rebuild_tensor_v2`: a strided view into a storage.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    kind: Result<Kind, String>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

#[derive(Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    /// An integer that does not fit in i64.
    BigInt,
    Float,
    Str(Rc<str>),
    Tuple(Rc<Items>),
    List(Rc<RefCell<Items>>),
    Dict(Rc<RefCell<DictItems>>),
    Global(Rc<(String, String)>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// A tensor that this reader cannot rebuild (quantized, sparse, ...): an error
    /// only if it is part of the selected state dict.
    UnsupportedTensor(Rc<str>),
    /// Any other python object, by a short description.
    Object(Rc<str>),
}

impl Value {
    fn type_name(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool => "bool".into(),
            Value::Int(_) | Value::BigInt => "int".into(),
            Value::Float => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global(g) => format!("global {}.{}", g.0, g.1),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::UnsupportedTensor(s) => format!("unsupported tensor ({s})"),
            Value::Object(s) => format!("object {s}"),
        }
    }

    fn object(desc: impl Into<String>) -> Value {
        Value::Object(Rc::from(desc.into()))
    }
}

fn tuple(items: Vec<Value>) -> Value {
    Value::Tuple(Rc::new(Items(items)))
}

// ---------------------------------------------------------------------------------
// The pickle machine
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct PickleError {
    offset: usize,
    reason: String,
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for messages.
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

/// Runs `data` (a whole pickle) and returns the object it builds.
fn unpickle(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let result = m.run();
    // Tear down iteratively (the memo and stack may hold deep structures).
    let mut rest: Vec<Value> = m.stack.drain(..).collect();
    rest.extend(m.memo.drain().map(|(_, v)| v));
    drop_iteratively(rest);
    result
}

impl Machine<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            offset: self.op_pos,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: u64) -> Result<&[u8], PickleError> {
        let avail = (self.data.len() - self.pos) as u64;
        if n > avail {
            return self.err(format!(
                "unexpected end of data: need {n} bytes, {avail} left"
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.le()?))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.le()?))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.le()?))
    }

    /// A newline-terminated argument of the text opcodes (without the newline).
    fn line(&mut self) -> Result<&[u8], PickleError> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None => self.err("unterminated text argument"),
        }
    }

    fn line_str(&mut self) -> Result<String, PickleError> {
        Ok(String::from_utf8_lossy(self.line()?).into_owned())
    }

    fn line_int(&mut self) -> Result<u64, PickleError> {
        let s = self.line_str()?;
        match s.trim().parse() {
            Ok(v) => Ok(v),
            Err(_) => self.err(format!("bad integer argument {s:?}")),
        }
    }

    fn string(&mut self, n: u64) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        Ok(Value::Str(Rc::from(
            String::from_utf8_lossy(bytes).as_ref(),
        )))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("stack underflow");
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    fn top(&self) -> Result<&Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("stack underflow");
        }
        match self.stack.last() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        match self.marks.pop() {
            Some(mark) if mark <= self.stack.len() => Ok(self.stack.split_off(mark)),
            _ => self.err("no MARK on the stack"),
        }
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PickleError> {
        match self.memo.get(&index) {
            Some(v) => {
                let v = v.clone();
                self.push(v);
                Ok(())
            }
            None => self.err(format!("memo key {index} not found")),
        }
    }

    fn int_from_le_bytes(bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Value::Int(0);
        }
        if bytes.len() > 8 {
            // Fits in i64 only if the high bytes are pure sign extension.
            let sign = if bytes[bytes.len() - 1] & 0x80 != 0 {
                0xff
            } else {
                0
            };
            if bytes[8..].iter().any(|&b| b != sign) || (bytes[7] & 0x80 != 0) != (sign == 0xff) {
                return Value::BigInt;
            }
            return Self::int_from_le_bytes(&bytes[..8]);
        }
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
        buf[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(buf))
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                // FRAME: only a hint for buffering.
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // POP
                b'0' => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool),
                0x89 => self.push(Value::Bool),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v.into()));
                }
                // LONG1, LONG4
                0x8a => {
                    let n = self.u8()?;
                    let v = Self::int_from_le_bytes(self.take(n.into())?);
                    self.push(v);
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.le()?);
                    if n < 0 {
                        return self.err("negative LONG4 length");
                    }
                    let v = Self::int_from_le_bytes(self.take(n as u64)?);
                    self.push(v);
                }
                // INT (protocol 0; "00"/"01" are False/True)
                b'I' => {
                    let s = self.line_str()?;
                    let v = match s.as_str() {
                        "00" | "01" => Value::Bool,
                        s => match s.parse::<i64>() {
                            Ok(v) => Value::Int(v),
                            Err(_) => return self.err(format!("bad INT argument {s:?}")),
                        },
                    };
                    self.push(v);
                }
                // LONG (protocol 0)
                b'L' => {
                    let s = self.line_str()?;
                    let v = match s.trim_end_matches('L').parse::<i64>() {
                        Ok(v) => Value::Int(v),
                        Err(_) => Value::BigInt,
                    };
                    self.push(v);
                }
                // BINFLOAT (8 bytes), FLOAT: the value is not needed.
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float);
                }
                b'F' => {
                    let s = self.line_str()?;
                    if s.trim().parse::<f64>().is_err() {
                        return self.err(format!("bad FLOAT argument {s:?}"));
                    }
                    self.push(Value::Float);
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' => {
                    let n = self.u32()?;
                    let v = self.string(n.into())?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.u8()?;
                    let v = self.string(n.into())?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.u64()?;
                    let v = self.string(n)?;
                    self.push(v);
                }
                // BINSTRING, SHORT_BINSTRING (python 2 str)
                b'T' => {
                    let n = i32::from_le_bytes(self.le()?);
                    if n < 0 {
                        return self.err("negative BINSTRING length");
                    }
                    let v = self.string(n as u64)?;
                    self.push(v);
                }
                b'U' => {
                    let n = self.u8()?;
                    let v = self.string(n.into())?;
                    self.push(v);
                }
                // STRING (quoted repr), UNICODE (raw-unicode-escape): protocol 0
                b'S' => {
                    let s = self.line_str()?;
                    let s = s.trim();
                    let unquoted = s
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                        .unwrap_or(s);
                    self.push(Value::Str(Rc::from(unquoted)));
                }
                b'V' => {
                    let s = self.line_str()?;
                    self.push(Value::Str(Rc::from(s)));
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' => {
                    let n = self.u32()?;
                    self.take(n.into())?;
                    self.push(Value::object("bytes"));
                }
                b'C' => {
                    let n = self.u8()?;
                    self.take(n.into())?;
                    self.push(Value::object("bytes"));
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    self.take(n)?;
                    self.push(Value::object("bytes"));
                }
                // Tuples
                b')' => self.push(tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(tuple(items));
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push(tuple(vec![a]));
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(tuple(vec![a, b]));
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push(tuple(vec![a, b, c]));
                }
                // Lists (and sets, kept as lists)
                b']' | 0x8f => self.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(Items(items)))));
                }
                0x91 => {
                    // FROZENSET
                    let items = self.pop_mark()?;
                    self.push(tuple(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend(vec![v])?;
                }
                b'e' | 0x90 => {
                    // APPENDS, ADDITEMS
                    let items = self.pop_mark()?;
                    self.extend(items)?;
                }
                // Dicts
                b'}' => self.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = Value::Dict(Rc::default());
                    self.push(dict);
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    self.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.push(Value::Global(Rc::new((m.to_string(), n.to_string()))));
                        }
                        (m, n) => {
                            return self.err(format!(
                                "STACK_GLOBAL needs two strings, got {} and {}",
                                m.type_name(),
                                n.type_name()
                            ));
                        }
                    }
                }
                // REDUCE
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let args = match args {
                        Value::Tuple(args) => args,
                        other => {
                            return self.err(format!(
                                "REDUCE arguments must be a tuple, got {}",
                                other.type_name()
                            ));
                        }
                    };
                    let v = self.call(&func, &args.0, 0)?;
                    self.push(v);
                }
                // NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args)
                0x81 => {
                    self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(&cls);
                    self.push(v);
                }
                0x92 => {
                    self.pop()?;
                    self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(&cls);
                    self.push(v);
                }
                // BUILD: sets an object's state (e.g. a state dict's `_metadata`); the
                // state is not needed.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v);
                }
                b'P' => return self.err("text persistent ids (PERSID) are not used by torch.save"),
                // Memo
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i.into())?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let i = self.line_int()?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i.into())?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i.into())?;
                }
                b'g' => {
                    let i = self.line_int()?;
                    self.memo_get(i)?;
                }
                0x82..=0x84 => {
                    return self.err("extension registry opcodes (EXT1/2/4) are not supported");
                }
                0x97 | 0x98 => {
                    return self.err("out-of-band buffers (protocol 5) are not supported");
                }
                op => return self.err(format!("unknown pickle opcode 0x{op:02x}")),
            }
        }
    }

    /// APPEND / APPENDS / ADDITEMS on the top of the stack.
    fn extend(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        match self.top()? {
            Value::List(list) => {
                list.borrow_mut().0.extend(items);
                Ok(())
            }
            // An arbitrary object with `append`/`extend`: its content is not needed.
            Value::Object(_) => {
                drop_iteratively(items);
                Ok(())
            }
            other => {
                let t = other.type_name();
                drop_iteratively(items);
                self.err(format!("cannot append to a {t}"))
            }
        }
    }

    /// DICT / SETITEM / SETITEMS on the top of the stack.
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            drop_iteratively(items);
            return self.err("odd number of items for a dict");
        }
        match self.top()? {
            Value::Dict(dict) => {
                let mut dict = dict.borrow_mut();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict.set(k, v);
                }
                Ok(())
            }
            // An object with `__setitem__`: its content is not needed.
            Value::Object(_) => {
                drop_iteratively(items);
                Ok(())
            }
            other => {
                let t = other.type_name();
                drop_iteratively(items);
                self.err(format!("cannot set items on a {t}"))
            }
        }
    }

    fn new_object(&self, cls: &Value) -> Value {
        match cls {
            Value::Global(g) if is_dict_class(&g.0, &g.1) => Value::Dict(Rc::default()),
            Value::Global(g) => Value::object(format!("{}.{}", g.0, g.1)),
            other => Value::object(format!("instance of {}", other.type_name())),
        }
    }

    /// REDUCE: `func(*args)` for the callables state dicts use; any other call gives an
    /// opaque object.
    fn call(&self, func: &Value, args: &[Value], depth: usize) -> Result<Value, PickleError> {
        let Value::Global(g) = func else {
            return Ok(Value::object(format!(
                "result of calling {}",
                func.type_name()
            )));
        };
        let (module, name) = (g.0.as_str(), g.1.as_str());
        if is_dict_class(module, name) {
            return self.make_dict(args);
        }
        match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&args.len()) {
                    return self.err(format!(
                        "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                        args.len()
                    ));
                }
                self.rebuild_tensor(args, None)
            }
            ("torch._utils", "_rebuild_tensor") => {
                if args.len() != 4 {
                    return self.err(format!(
                        "_rebuild_tensor takes 4 arguments, got {}",
                        args.len()
                    ));
                }
                self.rebuild_tensor(args, None)
            }
            ("torch._utils", "_rebuild_tensor_v3") => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
                if !(7..=8).contains(&args.len()) {
                    return self.err(format!(
                        "_rebuild_tensor_v3 takes 7 or 8 arguments, got {}",
                        args.len()
                    ));
                }
                let kind = match &args[6] {
                    Value::Global(d) if d.0 == "torch" => {
                        kind_of_dtype(&d.1).ok_or_else(|| format!("dtype torch.{}", d.1))
                    }
                    other => {
                        return self.err(format!(
                            "_rebuild_tensor_v3 dtype must be a torch dtype, got {}",
                            other.type_name()
                        ));
                    }
                };
                self.rebuild_tensor(args, Some(kind))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                // (data, requires_grad, backward_hooks[, state])
                match args.first() {
                    Some(v @ (Value::Tensor(_) | Value::UnsupportedTensor(_))) => Ok(v.clone()),
                    other => self.err(format!(
                        "{name} expects a tensor, got {}",
                        other.map_or("nothing".into(), Value::type_name)
                    )),
                }
            }
            ("torch._tensor", "_rebuild_from_type_v2" | "_rebuild_from_type") => {
                // (func, new_type, args, state): tensor subclass; the subclass is dropped.
                match args {
                    [_, _, _, _] if depth >= 8 => self.err(format!("{name} nested too deeply")),
                    [inner, _, Value::Tuple(inner_args), _] => {
                        self.call(inner, &inner_args.0, depth + 1)
                    }
                    _ => self.err(format!("{name}: unexpected arguments")),
                }
            }
            ("torch", "Size") => match args.first() {
                Some(v @ Value::Tuple(_)) => Ok(v.clone()),
                _ => Ok(tuple(Vec::new())),
            },
            ("torch._utils", n) if n.starts_with("_rebuild_") => Ok(Value::UnsupportedTensor(
                Rc::from(format!("torch._utils.{n}")),
            )),
            _ => Ok(Value::object(format!("{module}.{name}"))),
        }
    }

    /// `OrderedDict()`, `OrderedDict([(k, v), ...])`, `dict(...)`.
    fn make_dict(&self, args: &[Value]) -> Result<Value, PickleError> {
        let mut dict = DictItems::default();
        match args.first() {
            None | Some(Value::None) => {}
            Some(Value::Dict(d)) => {
                for (k, v) in &d.borrow().entries {
                    dict.set(k.clone(), v.clone());
                }
            }
            Some(Value::List(_) | Value::Tuple(_)) => {
                let pairs: Vec<Value> = match &args[0] {
                    Value::List(l) => l.borrow().0.clone(),
                    Value::Tuple(t) => t.0.clone(),
                    _ => Vec::new(),
                };
                for pair in &pairs {
                    match pair {
                        Value::Tuple(kv) if kv.0.len() == 2 => {
                            dict.set(kv.0[0].clone(), kv.0[1].clone())
                        }
                        Value::List(kv) if kv.borrow().0.len() == 2 => {
                            let kv = kv.borrow();
                            dict.set(kv.0[0].clone(), kv.0[1].clone());
                        }
                        other => {
                            return self.err(format!(
                                "dict items must be pairs, got {}",
                                other.type_name()
                            ));
                        }
                    }
                }
            }
            Some(other) => {
                return self.err(format!("cannot build a dict from {}", other.type_name()));
            }
        }
        Ok(Value::Dict(Rc::new(RefCell::new(dict))))
    }

    fn rebuild_tensor(
        &self,
        args: &[Value],
        kind: Option<Result<Kind, String>>,
    ) -> Result<Value, PickleError> {
        let storage = match &args[0] {
            Value::Storage(s) => s.clone(),
            other => {
                return self.err(format!(
                    "tensor storage must be a persistent storage id, got {}",
                    other.type_name()
                ));
            }
        };
        let offset = match &args[1] {
            Value::Int(i) => *i,
            other => {
                return self.err(format!(
                    "tensor storage offset must be an int, got {}",
                    other.type_name()
                ));
            }
        };
        let size = self.int_tuple(&args[2], "size")?;
        let stride = self.int_tuple(&args[3], "stride")?;
        if size.len() != stride.len() {
            return self.err(format!(
                "tensor size has {} dims but stride has {}",
                size.len(),
                stride.len()
            ));
        }
        let kind = match kind {
            Some(k) => k,
            None => storage
                .kind
                .ok_or_else(|| format!("storage type torch.{}", storage.type_name)),
        };
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage,
            kind,
            offset,
            size,
            stride,
        })))
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<i64>, PickleError> {
        let items: Vec<Value> = match v {
            Value::Tuple(t) => t.0.clone(),
            Value::List(l) => l.borrow().0.clone(),
            other => {
                return self.err(format!(
                    "tensor {what} must be a tuple, got {}",
                    other.type_name()
                ));
            }
        };
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => self.err(format!(
                    "tensor {what} entries must be ints, got {}",
                    other.type_name()
                )),
            })
            .collect()
    }

    /// `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&self, pid: &Value) -> Result<Value, PickleError> {
        let Value::Tuple(t) = pid else {
            return self.err(format!(
                "persistent id must be a tuple, got {}",
                pid.type_name()
            ));
        };
        match t.0.as_slice() {
            [Value::Str(tag), storage_type, key, _location, numel] if &**tag == "storage" => {
                let (kind, elem_size, type_name) = match storage_type {
                    Value::Global(g) => match storage_kind(&g.0, &g.1) {
                        Some((kind, size)) => (Some(kind), size, g.1.clone()),
                        None => (None, 1, g.1.clone()),
                    },
                    other => {
                        return self.err(format!(
                            "storage type must be a class, got {}",
                            other.type_name()
                        ));
                    }
                };
                let key = match key {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    other => {
                        return self.err(format!(
                            "storage key must be a string, got {}",
                            other.type_name()
                        ));
                    }
                };
                if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
                    return self.err(format!("bad storage key {key:?}"));
                }
                let numel = match numel {
                    Value::Int(n) if *n >= 0 => *n as u64,
                    other => {
                        return self.err(format!(
                            "storage size must be a non-negative int, got {}",
                            other.type_name()
                        ));
                    }
                };
                Ok(Value::Storage(Rc::new(StorageRef {
                    key,
                    kind,
                    type_name,
                    elem_size,
                    numel,
                })))
            }
            [Value::Str(tag), ..] if &**tag == "module" => Ok(Value::object("module source")),
            _ => self.err(
                "unsupported persistent id (expected ('storage', type, key, location, numel))",
            ),
        }
    }
}

fn is_dict_class(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict")
    )
}

/// Typed storage classes (`torch.FloatStorage`, ...) and `torch.UntypedStorage`
/// (bytes, used with `_rebuild_tensor_v3`).
fn storage_kind(module: &str, name: &str) -> Option<(Kind, u64)> {
    if module != "torch" && module != "torch.storage" {
        return None;
    }
    let kind = match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" | "UntypedStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        _ => return None,
    };
    Some((kind, kind.elt_size_in_bytes() as u64))
}

/// `torch.<dtype>` globals of `_rebuild_tensor_v3` that tch can represent.
fn kind_of_dtype(name: &str) -> Option<Kind> {
    Some(match name {
        "float32" | "float" => Kind::Float,
        "float64" | "double" => Kind::Double,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" | "long" => Kind::Int64,
        "int32" | "int" => Kind::Int,
        "int16" | "short" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        "complex64" | "cfloat" => Kind::ComplexFloat,
        "complex128" | "cdouble" => Kind::ComplexDouble,
        "float8_e5m2" => Kind::Float8e5m2,
        "float8_e4m3fn" => Kind::Float8e4m3fn,
        "float8_e5m2fnuz" => Kind::Float8e5m2fnuz,
        "float8_e4m3fnuz" => Kind::Float8e4m3fnuz,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------
// Finding the state dict
// ---------------------------------------------------------------------------------

/// A selected state-dict entry.
enum Entry {
    Tensor(String, Rc<TensorRef>),
    Unsupported(String, Rc<str>),
}

fn has_tensors(d: &DictItems) -> bool {
    d.entries.iter().any(|(k, v)| {
        matches!(k, Value::Str(_)) && matches!(v, Value::Tensor(_) | Value::UnsupportedTensor(_))
    })
}

/// The name->tensor dict: the top-level object itself, or a dict nested in it.
fn select_state_dict(top: &Value) -> Result<Vec<Entry>, String> {
    let Value::Dict(d) = top else {
        return Err(format!(
            "the checkpoint holds a {}, not a dict of tensors (a state dict)",
            top.type_name()
        ));
    };
    let chosen = find_state_dict(d, 0)?.ok_or_else(|| {
        let keys: Vec<String> = d
            .borrow()
            .entries
            .iter()
            .take(20)
            .map(|(k, v)| match k {
                Value::Str(s) => format!("{s:?} ({})", v.type_name()),
                other => format!("<{}>", other.type_name()),
            })
            .collect();
        format!(
            "no tensors found: the checkpoint is a dict without a state dict in it (keys: {})",
            keys.join(", ")
        )
    })?;
    let chosen = chosen.borrow();
    Ok(chosen
        .entries
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => Some(Entry::Tensor(k.to_string(), t.clone())),
            (Value::Str(k), Value::UnsupportedTensor(why)) => {
                Some(Entry::Unsupported(k.to_string(), why.clone()))
            }
            _ => None,
        })
        .collect())
}

fn find_state_dict(
    d: &Rc<RefCell<DictItems>>,
    depth: usize,
) -> Result<Option<Rc<RefCell<DictItems>>>, String> {
    if has_tensors(&d.borrow()) {
        return Ok(Some(d.clone()));
    }
    if depth >= MAX_UNWRAP_DEPTH {
        return Ok(None);
    }
    let mut candidates: Vec<(Rc<str>, Rc<RefCell<DictItems>>)> = Vec::new();
    for (k, v) in &d.borrow().entries {
        if let (Value::Str(k), Value::Dict(inner)) = (k, v) {
            // A dict that contains itself is skipped (Rc::ptr_eq), deeper cycles end
            // at MAX_UNWRAP_DEPTH.
            if Rc::ptr_eq(inner, d) {
                continue;
            }
            if let Some(found) = find_state_dict(inner, depth + 1)? {
                candidates.push((k.clone(), found));
            }
        }
    }
    for preferred in PREFERRED_KEYS {
        if let Some((_, found)) = candidates.iter().find(|(k, _)| &**k == *preferred) {
            return Ok(Some(found.clone()));
        }
    }
    match candidates.len() {
        0 => Ok(None),
        1 => Ok(candidates.pop().map(|(_, found)| found)),
        _ => Err(format!(
            "several nested dicts hold tensors ({}); cannot tell which is the model's state dict",
            candidates
                .iter()
                .map(|(k, _)| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

// ---------------------------------------------------------------------------------
// Building tensors
// ---------------------------------------------------------------------------------

/// Reads `nbytes` bytes of the storage named `key`.
type StorageLoader<'a> = dyn FnMut(&str, u64) -> Result<Vec<u8>, String> + 'a;

enum MaterializeError {
    Tensor { key: String, reason: String },
    Torch { key: String, source: tch::TchError },
}

/// Builds every selected tensor, reading each storage once through `load(key,
/// nbytes)` (which must return exactly `nbytes` bytes) and releasing it after its last
/// use.
fn materialize_all(
    entries: &[Entry],
    byteorder: ByteOrder,
    load: &mut StorageLoader<'_>,
) -> Result<Vec<(String, Tensor)>, MaterializeError> {
    let mut remaining: HashMap<&str, usize> = HashMap::new();
    for e in entries {
        if let Entry::Tensor(_, t) = e {
            *remaining.entry(t.storage.key.as_str()).or_default() += 1;
        }
    }
    let mut cache: HashMap<String, Rc<Vec<u8>>> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let (key, t) = match e {
            Entry::Tensor(key, t) => (key, t),
            Entry::Unsupported(key, why) => {
                return Err(MaterializeError::Tensor {
                    key: key.clone(),
                    reason: format!(
                        "unsupported kind of tensor ({why}); only dense tensors can be read"
                    ),
                });
            }
        };
        let fail = |reason: String| MaterializeError::Tensor {
            key: key.clone(),
            reason,
        };
        let storage = &t.storage;
        let bytes = match cache.get(&storage.key) {
            Some(b) => b.clone(),
            None => {
                let nbytes = storage
                    .nbytes()
                    .ok_or_else(|| fail(format!("storage {} size overflows", storage.key)))?;
                let b = Rc::new(load(&storage.key, nbytes).map_err(&fail)?);
                if b.len() as u64 != nbytes {
                    return Err(fail(format!(
                        "storage {} has {} bytes, expected {nbytes}",
                        storage.key,
                        b.len()
                    )));
                }
                cache.insert(storage.key.clone(), b.clone());
                b
            }
        };
        if let Some(n) = remaining.get_mut(storage.key.as_str()) {
            *n -= 1;
            if *n == 0 {
                cache.remove(&storage.key);
            }
        }
        let tensor = build_tensor(t, &bytes, byteorder).map_err(fail)?;
        let tensor = match tensor {
            Ok(t) => t,
            Err(source) => {
                return Err(MaterializeError::Torch {
                    key: key.clone(),
                    source,
                });
            }
        };
        out.push((key.clone(), tensor));
    }
    Ok(out)
}

/// Copies the strided view `t` out of `storage` into a new contiguous CPU tensor.
fn build_tensor(
    t: &TensorRef,
    storage: &[u8],
    byteorder: ByteOrder,
) -> Result<Result<Tensor, tch::TchError>, String> {
    let kind = t
        .kind
        .clone()
        .map_err(|what| format!("unsupported element type ({what}); tch cannot represent it"))?;
    let elem = kind.elt_size_in_bytes();
    let capacity = (storage.len() / elem) as u64; // elements the storage holds
    if !storage.len().is_multiple_of(elem) {
        return Err(format!(
            "storage {} has {} bytes, not a multiple of the {elem}-byte element size",
            t.storage.key,
            storage.len()
        ));
    }
    if t.offset < 0 {
        return Err(format!("negative storage offset {}", t.offset));
    }
    if let Some(s) = t.size.iter().find(|&&s| s < 0) {
        return Err(format!("negative size {s} in {:?}", t.size));
    }
    if let Some(s) = t.stride.iter().find(|&&s| s < 0) {
        return Err(format!("negative stride {s} in {:?}", t.stride));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |acc, &s| acc.checked_mul(s as u64))
        .ok_or_else(|| format!("size {:?} overflows", t.size))?;
    let out_bytes = numel
        .checked_mul(elem as u64)
        .ok_or_else(|| format!("size {:?} overflows", t.size))?;
    let offset = t.offset as u64;
    if numel > 0 {
        // Largest element index the view touches.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(offset, |acc, (&size, &stride)| {
                (size as u64 - 1)
                    .checked_mul(stride as u64)
                    .and_then(|x| acc.checked_add(x))
            })
            .ok_or_else(|| format!("size {:?} / stride {:?} overflow", t.size, t.stride))?;
        if last >= capacity {
            return Err(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches element {last} but storage {} holds {capacity} {kind:?} elements",
                t.offset, t.size, t.stride, t.storage.key
            ));
        }
        if out_bytes > storage.len() as u64 && out_bytes > MAX_OVERLAP_VIEW_BYTES {
            return Err(format!(
                "overlapping view of size {:?} would need {out_bytes} bytes, more than allowed",
                t.size
            ));
        }
    }
    let out_len = usize::try_from(out_bytes).map_err(|_| "tensor too large".to_string())?;
    let contiguous = numel > 0 && is_contiguous(&t.size, &t.stride);
    let needs_fixup = byteorder == ByteOrder::Big || kind == Kind::Bool;
    if contiguous && !needs_fixup {
        // The common case: libtorch copies straight from the storage bytes.
        let start = offset as usize * elem;
        return Ok(Tensor::f_from_data_size(
            &storage[start..start + out_len],
            &t.size,
            kind,
        ));
    }
    let mut buf: Vec<u8>;
    if contiguous {
        let start = offset as usize * elem;
        buf = storage[start..start + out_len].to_vec();
    } else {
        buf = Vec::with_capacity(out_len);
        if numel > 0 {
            gather(storage, elem, offset as usize, &t.size, &t.stride, &mut buf);
        }
    }
    if byteorder == ByteOrder::Big {
        let unit = match kind {
            Kind::ComplexFloat | Kind::ComplexDouble | Kind::ComplexHalf => elem / 2,
            _ => elem,
        };
        if unit > 1 {
            for chunk in buf.chunks_exact_mut(unit) {
                chunk.reverse();
            }
        }
    }
    if kind == Kind::Bool {
        for b in &mut buf {
            *b = u8::from(*b != 0);
        }
    }
    Ok(Tensor::f_from_data_size(&buf, &t.size, kind))
}

/// Row-major contiguous (dims of size 1 may have any stride).
fn is_contiguous(size: &[i64], stride: &[i64]) -> bool {
    let mut expected = 1i64;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(s);
    }
    true
}

/// Appends the elements of a strided view (bounds already checked) to `out`.
fn gather(
    storage: &[u8],
    elem: usize,
    offset: usize,
    size: &[i64],
    stride: &[i64],
    out: &mut Vec<u8>,
) {
    let ndim = size.len();
    let mut index = vec![0i64; ndim];
    let mut pos = offset as i64;
    loop {
        let start = pos as usize * elem;
        out.extend_from_slice(&storage[start..start + elem]);
        // Advance the multi-index, last dimension fastest.
        let mut d = ndim;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            // Wrapping: a dimension of size 1 may carry any stride; the net position
            // is always in bounds.
            pos = pos.wrapping_add(stride[d]);
            if index[d] < size[d] {
                break;
            }
            pos = pos.wrapping_sub(stride[d].wrapping_mul(size[d]));
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-written protocol-2 pickle of
    /// `OrderedDict([("w", tensor), ("n", 5)])` where the tensor is a transposed 2x3
    /// view of a 6-element float storage "0".
    fn tiny_pickle() -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(b"\x80\x02");
        p.extend_from_slice(b"ccollections\nOrderedDict\nq\x00)R");
        p.extend_from_slice(b"(X\x01\x00\x00\x00w");
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
        p.extend_from_slice(b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend_from_slice(b"K\x00K\x03K\x02\x86K\x01K\x03\x86\x89h\x00)Rt"); // offset, size (3,2), stride (1,3)
        p.extend_from_slice(b"R");
        p.extend_from_slice(b"X\x01\x00\x00\x00nK\x05");
        p.extend_from_slice(b"u}X\x09\x00\x00\x00_metadataNsb.");
        p
    }

    fn storage_bytes() -> Vec<u8> {
        (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    fn run(p: &[u8], storage: &[u8], order: ByteOrder) -> Result<Vec<(String, Tensor)>, String> {
        let top = unpickle(p).map_err(|e| format!("pickle@{}: {}", e.offset, e.reason))?;
        let entries = select_state_dict(&top)?;
        let mut load = |_key: &str, n: u64| -> Result<Vec<u8>, String> {
            if n as usize > storage.len() {
                return Err("short".into());
            }
            Ok(storage[..n as usize].to_vec())
        };
        materialize_all(&entries, order, &mut load).map_err(|e| match e {
            MaterializeError::Tensor { key, reason } => format!("{key}: {reason}"),
            MaterializeError::Torch { key, source } => format!("{key}: {source}"),
        })
    }

    #[test]
    fn tiny_pickle_transposed_view() {
        let sd = run(&tiny_pickle(), &storage_bytes(), ByteOrder::Little).unwrap();
        assert_eq!(sd.len(), 1);
        assert_eq!(sd[0].0, "w");
        let t = &sd[0].1;
        assert_eq!(t.size(), vec![3, 2]);
        let v: Vec<f32> = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        // storage laid out as 2x3 [[0,1,2],[3,4,5]], viewed transposed
        assert_eq!(v, vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn big_endian_storage_is_swapped() {
        let be: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_be_bytes()).collect();
        let sd = run(&tiny_pickle(), &be, ByteOrder::Big).unwrap();
        let v: Vec<f32> = Vec::<f32>::try_from(sd[0].1.flatten(0, -1)).unwrap();
        assert_eq!(v, vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn view_past_storage_is_an_error() {
        let short: Vec<u8> = storage_bytes()[..20].to_vec();
        let err = run(&tiny_pickle(), &short, ByteOrder::Little).unwrap_err();
        assert!(err.contains("short"), "{err}");
        // numel 6 in the pid but size (3,3) would read past it
        let p = tiny_pickle();
        let needle = b"K\x03K\x02\x86";
        let at = p.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut q = p.clone();
        q[at + 3] = 3;
        let err = run(&q, &storage_bytes(), ByteOrder::Little).unwrap_err();
        assert!(err.contains("reaches element"), "{err}");
    }

    #[test]
    fn int_decoding() {
        assert!(matches!(
            Machine::int_from_le_bytes(&[0xff]),
            Value::Int(-1)
        ));
        assert!(matches!(
            Machine::int_from_le_bytes(&[0x80, 0x00]),
            Value::Int(128)
        ));
        assert!(matches!(
            Machine::int_from_le_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Value::BigInt
        ));
        assert!(matches!(
            Machine::int_from_le_bytes(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Value::Int(-2)
        ));
        assert!(matches!(Machine::int_from_le_bytes(&[]), Value::Int(0)));
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        // ((((...)))) nested a million times, then a list that holds itself.
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        p.extend_from_slice(b"0]q\x00h\x00a0}.");
        let top = unpickle(&p).unwrap();
        assert!(matches!(top, Value::Dict(_)));
        assert!(
            select_state_dict(&top)
                .err()
                .unwrap()
                .contains("no tensors")
        );
    }

    #[test]
    fn mutated_pickles_never_panic() {
        let p = tiny_pickle();
        let storage = storage_bytes();
        for len in 0..p.len() {
            let _ = run(&p[..len], &storage, ByteOrder::Little);
        }
        for i in 0..p.len() {
            for b in [
                0u8, 1, 2, 0x7f, 0x80, 0xff, b'(', b't', b'R', b'Q', b'h', b'.',
            ] {
                let mut q = p.clone();
                q[i] = b;
                let _ = run(&q, &storage, ByteOrder::Little);
            }
        }
    }

    #[test]
    fn nested_state_dict_is_unwrapped_and_preferred_key_wins() {
        // {"optimizer": {"state": {"m": t}}, "model": {"w": t}, "epoch": 3}
        let t = tiny_pickle();
        // Reuse the tensor-building bytes of the tiny pickle by running it and wrapping
        // the result by hand.
        let inner = unpickle(&t).unwrap();
        let wrap = |pairs: Vec<(&str, Value)>| {
            let mut d = DictItems::default();
            for (k, v) in pairs {
                d.set(Value::Str(Rc::from(k)), v);
            }
            Value::Dict(Rc::new(RefCell::new(d)))
        };
        let opt = wrap(vec![("state", wrap(vec![("m", inner.clone())]))]);
        let top = wrap(vec![
            ("optimizer", opt),
            ("model", inner),
            ("epoch", Value::Int(3)),
        ]);
        let entries = select_state_dict(&top).unwrap();
        assert_eq!(entries.len(), 1);
        // Two unnamed candidates are ambiguous.
        let inner2 = unpickle(&t).unwrap();
        let inner3 = unpickle(&t).unwrap();
        let top = wrap(vec![("a", inner2), ("b", inner3)]);
        let err = select_state_dict(&top).err().unwrap();
        assert!(err.contains("several"), "{err}");
    }

    #[test]
    fn legacy_magic_is_recognised() {
        assert!(is_legacy_torch_file(
            b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02"
        ));
        assert!(!is_legacy_torch_file(b"PK\x03\x04"));
        assert!(!is_legacy_torch_file(b""));
    }
}
