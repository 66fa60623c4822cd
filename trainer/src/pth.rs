//! Reader for PyTorch checkpoints written by `torch.save`, in both of its formats.
//!
//! - **Zip** (the default since PyTorch 1.6): a zip archive holding `<name>/data.pkl`
//!   (the pickled object), `<name>/data/<key>` (the raw bytes of each storage) and,
//!   since 1.10, `<name>/byteorder` (`little` or `big`; older files are little-endian).
//! - **Legacy** (PyTorch 0.1.10 to 1.5, and `_use_new_zipfile_serialization=False`
//!   since; torchvision's ImageNet VGG16 is such a file): one stream of five pickles
//!   and the data: the magic number, the protocol version 1001, a dict of system
//!   information (byte order, type sizes), the object, and the list of storage keys;
//!   then, for each key in that order, the storage's element count (8 bytes,
//!   little-endian) and its bytes (little-endian).
//!
//! In both, the object is a pickle in which a tensor is a call
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
//! (`_rebuild_tensor` before PyTorch 0.4, `_rebuild_tensor_v3` with an explicit dtype
//! for types without a storage class) and a storage is a persistent id
//! `('storage', torch.FloatStorage, key, location, numel[, view])`. The pickle machine
//! here runs the opcodes of pickle protocols 2 to 5; python objects other than dicts,
//! lists, tuples, scalars and tensors are kept as opaque values, so training
//! checkpoints that also hold an epoch, optimiser state or an argument namespace still
//! load.
//!
//! The state dict is the top-level dict if it holds tensors, else the one dict nested
//! in it that does (`{"state_dict": sd, "epoch": 3}`, `{"model": sd, "optimizer":
//! ...}`; [`PREFERRED_KEYS`] decide between several). A `module.` prefix on every name
//! (`nn.DataParallel`) is removed. Tensors come back on the CPU, contiguous, in the
//! order of the file. Bad input gives a [`PthError`] naming the file, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Kind, Tensor};

/// The one-line conversion to a safetensors file, for files this reader refuses.
pub const RESAVE_COMMAND: &str = "python -c \"import torch; from safetensors.torch import save_file; sd=torch.load('in.pth', map_location='cpu'); save_file({k: v.contiguous() for k, v in sd.items()}, 'out.safetensors')\"";

/// How deep nested dicts are searched for the state dict.
const MAX_UNWRAP_DEPTH: usize = 4;
/// Keys that usually hold the weights in a training checkpoint, in order of preference
/// when several nested dicts hold tensors.
pub const PREFERRED_KEYS: &[&str] = &[
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
/// A view that repeats elements (stride 0, as after `expand`) is materialised only up
/// to this many bytes beyond its storage's size.
const MAX_VIEW_BYTES: u64 = 1 << 30;
/// The legacy format's magic number 0x1950a86a20f9469cfc6c as pickle protocol 2 writes
/// it (`PROTO 2`, `LONG1` of 10 little-endian bytes).
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

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
    /// Not a `torch.save` file, a damaged one, or a format this reader does not read.
    #[error("{}: {reason}", .path.display())]
    Format { path: PathBuf, reason: String },
    /// The pickled object is malformed or uses something the reader does not implement.
    #[error("{}: bad pickle data at byte {offset}: {reason}", .path.display())]
    Pickle {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The object is not (and does not contain) a state dict.
    #[error("{}: {reason}", .path.display())]
    Structure { path: PathBuf, reason: String },
    /// One tensor cannot be rebuilt (bad sizes, missing or short storage, unsupported
    /// dtype, or libtorch refused it).
    #[error("{}: tensor '{key}': {reason}", .path.display())]
    Tensor {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Reads the state dict of a `torch.save` file (zip or legacy): `(name, tensor)` pairs
/// in file order, CPU tensors, contiguous. See the module docs.
pub fn load_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, PthError> {
    let io = |source| PthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |reason: String| PthError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut head = Vec::new();
    (&mut file).take(512).read_to_end(&mut head).map_err(io)?;
    file.rewind().map_err(io)?;
    let (obj, storages) = if head.starts_with(b"PK\x03\x04") {
        let (pickle, storages) = open_zip(file).map_err(format)?;
        (
            unpickle(&mut pickle.as_slice(), pickle.len() as u64, 0),
            storages,
        )
    } else if is_legacy(&head) {
        let mut r = BufReader::new(file);
        let obj = legacy_object(&mut r, len);
        let pos = obj.as_ref().map_or(0, |o| o.end);
        (obj, Storages::Legacy { r, pos, len })
    } else if head.get(257..262) == Some(b"ustar".as_slice()) {
        return Err(format(format!(
            "a tar-format checkpoint of PyTorch before 0.1.10, which this reader does not \
             read; convert it with a current PyTorch: {RESAVE_COMMAND}"
        )));
    } else {
        let what = if head.is_empty() {
            "empty"
        } else {
            "unknown header"
        };
        return Err(format(format!(
            "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save \
             stream: {what})"
        )));
    };
    let obj = obj.map_err(|e| e.into_error(path))?;
    let entries = select_state_dict(&obj).map_err(|reason| PthError::Structure {
        path: path.to_path_buf(),
        reason,
    })?;
    materialize(path, &obj, &entries, storages)
}

// ---------------------------------------------------------------------------------
// The two containers
// ---------------------------------------------------------------------------------

/// Where the storages' bytes are.
enum Storages {
    /// `<prefix>/data/<key>` entries of a zip archive.
    Zip {
        zip: zip::ZipArchive<BufReader<File>>,
        prefix: String,
        big_endian: bool,
    },
    /// The legacy stream at the key-list pickle (`pos`), and the file's length.
    Legacy {
        r: BufReader<File>,
        pos: u64,
        len: u64,
    },
}

/// A zip checkpoint's `data.pkl` and its storages.
fn open_zip(file: File) -> Result<(Vec<u8>, Storages), String> {
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    let names: Vec<String> = zip.file_names().flatten().map(|n| n.into_owned()).collect();
    // The archive's one top folder (`archive` in recent files, the file's stem before).
    let prefixes: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix("/data.pkl"))
        .filter(|p| !p.is_empty() && !p.contains('/'))
        .collect();
    let prefix = match prefixes.as_slice() {
        [p] => p.to_string(),
        [] if names.iter().any(|n| n.ends_with("/constants.pkl")) => {
            return Err(
                "a TorchScript archive (torch.jit.save), not a state dict; in python: \
                        torch.save(torch.jit.load(path).state_dict(), 'out.pth')"
                    .into(),
            );
        }
        _ => {
            return Err(format!(
                "not one <name>/data.pkl in the archive: {prefixes:?}"
            ));
        }
    };
    let byteorder = format!("{prefix}/byteorder");
    let big_endian = match zip.index_for_name(&byteorder) {
        None => false, // written since PyTorch 1.10; older files are little-endian
        Some(_) => match read_entry(&mut zip, &byteorder, 16, false)?.trim_ascii() {
            b"little" => false,
            b"big" => true,
            other => {
                let other = String::from_utf8_lossy(other);
                return Err(format!("{byteorder} says {other:?}, not little or big"));
            }
        },
    };
    let pickle = read_entry(&mut zip, &format!("{prefix}/data.pkl"), 1 << 30, false)?;
    let storages = Storages::Zip {
        zip,
        prefix,
        big_endian,
    };
    Ok((pickle, storages))
}

/// Zip entry `name`: at most `size` bytes, or exactly `size` bytes when `exact`.
fn read_entry(
    zip: &mut zip::ZipArchive<BufReader<File>>,
    name: &str,
    size: u64,
    exact: bool,
) -> Result<Vec<u8>, String> {
    let entry = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    if entry.size() > size || (exact && entry.size() != size) {
        return Err(format!(
            "{name} holds {} bytes, {size} expected",
            entry.size()
        ));
    }
    let mut buf = Vec::new();
    entry
        .take(size)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(buf)
}

/// Reads the legacy stream up to the object: magic number, protocol version, system
/// information, then the object itself (whose end is where the key list starts).
fn legacy_object(r: &mut BufReader<File>, len: u64) -> Result<Unpickled, PickleError> {
    let magic = unpickle(r, len, 0)?; // its value was checked on the header
    let version = unpickle(r, len, magic.end)?;
    if !matches!(version.root, Value::Int(1001)) {
        return Err(PickleError::at(
            magic.end,
            "legacy protocol version is not 1001",
        ));
    }
    let info = unpickle(r, len, version.end)?;
    if !matches!(
        info.get(&info.root, "little_endian"),
        Some(Value::Bool(true))
    ) {
        return Err(PickleError::at(
            version.end,
            "written on a big-endian machine (sys_info little_endian is not True), which \
             the legacy format does not support",
        ));
    }
    unpickle(r, len, info.end)
}

/// Whether a file starts like a legacy stream: the magic number, as pickle protocol 2
/// writes it or (after a FRAME) protocols 4 and 5.
fn is_legacy(head: &[u8]) -> bool {
    head.first() == Some(&0x80)
        && head[..head.len().min(32)]
            .windows(LEGACY_MAGIC.len() - 2)
            .any(|w| w == &LEGACY_MAGIC[2..])
}

/// Receives a storage's key and bytes, and whether they are big-endian.
type Visit<'a> = dyn FnMut(&str, &[u8], bool) -> Result<(), PthError> + 'a;

impl Storages {
    /// Hands the bytes of every storage in `wanted` to `visit`, reading each once.
    /// `all` holds every storage the pickle names.
    fn read(
        self,
        path: &Path,
        all: &HashMap<&str, &StorageRef>,
        wanted: &BTreeMap<&str, Vec<usize>>,
        visit: &mut Visit<'_>,
    ) -> Result<(), PthError> {
        let format = |reason: String| PthError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let nbytes = |s: &StorageRef| s.numel.saturating_mul(s.elem_size());
        match self {
            Storages::Zip {
                mut zip,
                prefix,
                big_endian,
            } => {
                for &key in wanted.keys() {
                    let name = format!("{prefix}/data/{key}");
                    let bytes =
                        read_entry(&mut zip, &name, nbytes(all[key]), true).map_err(format)?;
                    visit(key, &bytes, big_endian)?;
                }
            }
            // The key list, then each storage in its order: an 8-byte little-endian
            // element count and the (little-endian) bytes.
            Storages::Legacy { mut r, pos, len } => {
                let keys = unpickle(&mut r, len, pos).map_err(|e| e.into_error(path))?;
                let Some(Obj::List(items)) = keys.obj(&keys.root) else {
                    return Err(format("the legacy storage key list is not a list".into()));
                };
                let mut pos = keys.end;
                for k in items {
                    let key = match k {
                        Value::Str(s) => s.to_string(),
                        Value::Int(i) => i.to_string(),
                        _ => return Err(format("a legacy storage key is not a string".into())),
                    };
                    let bad = |what: &str| format(format!("storage {key}: {what}"));
                    let s = all
                        .get(key.as_str())
                        .ok_or_else(|| bad("not named by the pickle"))?;
                    let mut count = [0; 8];
                    r.read_exact(&mut count)
                        .map_err(|_| bad("the file ends early"))?;
                    pos += 8;
                    let n = nbytes(s);
                    if u64::from_le_bytes(count) != s.numel || n > len.saturating_sub(pos) {
                        return Err(bad(
                            "its size differs from the pickle's, or the file ends early",
                        ));
                    }
                    if wanted.contains_key(key.as_str()) {
                        let mut bytes = vec![0; n as usize];
                        r.read_exact(&mut bytes).map_err(|e| bad(&e.to_string()))?;
                        visit(&key, &bytes, false)?;
                    } else {
                        r.seek_relative(n as i64).map_err(|e| bad(&e.to_string()))?;
                    }
                    pos += n;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Pickle values
// ---------------------------------------------------------------------------------

/// A pickle value. Containers and torch objects live in [`Unpickled::heap`] and are
/// referred to by index, so memo references share them and nothing recurses on drop.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64, or a float: not needed.
    OtherNumber,
    Str(Rc<str>),
    Bytes,
    Obj(usize),
}

#[derive(Debug)]
enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Entries in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A class or function: `(module, name)`.
    Global(String, String),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
    /// A tensor this reader cannot rebuild (quantized, sparse, ...): an error only if
    /// it is part of the state dict.
    UnsupportedTensor(String),
    /// Any other python object, by its class.
    Other(String),
}

/// Text from pickled bytes.
fn utf8(b: &[u8]) -> Rc<str> {
    Rc::from(String::from_utf8_lossy(b).as_ref())
}

/// A storage, or (legacy views) a slice of one, named by a persistent id.
#[derive(Clone, Debug)]
struct StorageRef {
    key: String,
    /// Python name of the storage class, for messages.
    class: String,
    /// Element type (`Uint8` for `UntypedStorage`), `None` for classes tch cannot hold.
    kind: Option<Kind>,
    /// Elements of the whole storage.
    numel: u64,
    /// First element and element count of the slice (the whole storage but for views).
    view_offset: u64,
    view_numel: u64,
}

impl StorageRef {
    fn elem_size(&self) -> u64 {
        self.kind.map_or(1, |k| k.elt_size_in_bytes() as u64)
    }
}

/// A strided view of a storage, as `_rebuild_tensor_v2` describes it.
#[derive(Clone, Debug)]
struct TensorRef {
    storage: StorageRef,
    /// The tensor's element type, or why it cannot be represented.
    kind: Result<Kind, String>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// The result of one pickle.
struct Unpickled {
    root: Value,
    heap: Vec<Obj>,
    /// Stream position after the pickle (legacy files).
    end: u64,
}

impl Unpickled {
    fn obj(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(i) => self.heap.get(*i),
            _ => None,
        }
    }

    /// `v[key]` when `v` is a dict with that string key.
    fn get(&self, v: &Value, key: &str) -> Option<&Value> {
        match self.obj(v)? {
            Obj::Dict(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn describe(&self, v: &Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::OtherNumber => "number".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes => "bytes".into(),
            Value::Obj(_) => match self.obj(v) {
                Some(Obj::Tuple(_)) => "tuple".into(),
                Some(Obj::List(_)) => "list".into(),
                Some(Obj::Dict(_)) => "dict".into(),
                Some(Obj::Global(m, n)) => format!("class {m}.{n}"),
                Some(Obj::Storage(_)) => "storage".into(),
                Some(Obj::Tensor(_)) => "tensor".into(),
                Some(Obj::UnsupportedTensor(why)) => format!("unsupported tensor ({why})"),
                Some(Obj::Other(class)) => format!("{class} object"),
                None => "?".into(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------
// The pickle machine
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct PickleError {
    offset: u64,
    reason: String,
}

impl PickleError {
    fn at(offset: u64, reason: impl Into<String>) -> Self {
        Self {
            offset,
            reason: reason.into(),
        }
    }

    fn into_error(self, path: &Path) -> PthError {
        PthError::Pickle {
            path: path.to_path_buf(),
            offset: self.offset,
            reason: self.reason,
        }
    }
}

/// Runs one pickle from `r`, which starts at byte `start` of a stream of `limit` bytes.
fn unpickle(r: &mut impl Read, limit: u64, start: u64) -> Result<Unpickled, PickleError> {
    let mut m = Machine {
        r,
        pos: start,
        limit,
        op_pos: start,
        heap: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    Ok(Unpickled {
        root,
        heap: m.heap,
        end: m.pos,
    })
}

/// The pickle virtual machine (the subset of protocols 2 to 5 that `torch.save` and
/// the objects stored beside weights use).
struct Machine<'r, R> {
    r: &'r mut R,
    /// Bytes consumed and the most the stream can hold.
    pos: u64,
    limit: u64,
    /// Where the current opcode starts, for messages.
    op_pos: u64,
    heap: Vec<Obj>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl<R: Read> Machine<'_, R> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::at(self.op_pos, reason))
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, PickleError> {
        if n > self.limit.saturating_sub(self.pos) {
            return self.err(format!("unexpected end of data ({n} bytes announced)"));
        }
        let mut buf = vec![0; n as usize];
        if self.r.read_exact(&mut buf).is_err() {
            return self.err("unexpected end of data");
        }
        self.pos += n;
        Ok(buf)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.bytes(1)?[0])
    }

    /// A little-endian unsigned number of `width` bytes (1, 2, 4 or 8).
    fn uint(&mut self, width: usize) -> Result<u64, PickleError> {
        let mut a = [0; 8];
        a[..width].copy_from_slice(&self.bytes(width as u64)?);
        Ok(u64::from_le_bytes(a))
    }

    /// Bytes preceded by their count in `width` bytes.
    fn sized(&mut self, width: usize) -> Result<Vec<u8>, PickleError> {
        let n = self.uint(width)?;
        self.bytes(n)
    }

    /// A newline-terminated argument (GLOBAL's module and name).
    fn line(&mut self) -> Result<String, PickleError> {
        let mut out = Vec::new();
        loop {
            match self.u8()? {
                b'\n' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                _ if out.len() > 1024 => return self.err("overlong text argument"),
                b => out.push(b),
            }
        }
    }

    fn alloc(&mut self, obj: Obj) -> Value {
        self.heap.push(obj);
        Value::Obj(self.heap.len() - 1)
    }

    fn top(&self) -> Result<Value, PickleError> {
        match self.stack.last() {
            Some(v) if self.stack.len() > self.marks.last().copied().unwrap_or(0) => Ok(v.clone()),
            _ => self.err("stack underflow"),
        }
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        let v = self.top()?;
        self.stack.pop();
        Ok(v)
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        match self.marks.pop() {
            Some(mark) if mark <= self.stack.len() => Ok(self.stack.split_off(mark)),
            _ => self.err("no MARK on the stack"),
        }
    }

    fn memo_get(&mut self, i: u64) -> Result<Value, PickleError> {
        match self.memo.get(&i) {
            Some(v) => Ok(v.clone()),
            None => self.err(format!("memo key {i} not found")),
        }
    }

    fn memo_put(&mut self, i: u64) -> Result<Option<Value>, PickleError> {
        let v = self.top()?;
        self.memo.insert(i, v);
        Ok(None)
    }

    /// An integer of little-endian two's-complement bytes (LONG1, LONG4).
    fn long(bytes: &[u8]) -> Value {
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let fill = if negative { 0xff } else { 0 };
        let mut buf = [fill; 8];
        let n = bytes.len().min(8);
        buf[..n].copy_from_slice(&bytes[..n]);
        let v = i64::from_le_bytes(buf);
        if bytes.iter().skip(8).all(|&b| b == fill) && (v < 0) == negative {
            Value::Int(v)
        } else {
            Value::OtherNumber
        }
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            match self.u8()? {
                b'.' => return self.pop(), // STOP
                op => {
                    if let Some(v) = self.step(op)? {
                        self.stack.push(v);
                    }
                }
            }
        }
    }

    /// Executes one opcode; returns the value it pushes, if any. This handles the
    /// opcodes that push nothing (framing, marks, pops, in-place updates, memo
    /// writes); [`Self::object_op`] the ones that push a value.
    fn step(&mut self, op: u8) -> Result<Option<Value>, PickleError> {
        match op {
            0x80 => match self.uint(1)? {
                2..=5 => Ok(None), // PROTO
                p => self.err(format!("pickle protocol {p} is not supported")),
            },
            0x95 => self.uint(8).map(|_| None), // FRAME: a buffering hint
            b'(' => {
                self.marks.push(self.stack.len());
                Ok(None)
            }
            b'0' => self.pop().map(|_| None),
            b'1' => self.pop_mark().map(|_| None),
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.append(items)
            }
            b'd' => {
                let items = self.pop_mark()?;
                let v = self.alloc(Obj::Dict(Vec::new()));
                self.stack.push(v);
                self.set_items(items)
            }
            b's' => {
                let (v, k) = (self.pop()?, self.pop()?);
                self.set_items(vec![k, v])
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)
            }
            // BUILD: sets the state of the object below (a state dict's `_metadata`,
            // an object's attributes), which is not needed.
            b'b' => self.pop().and_then(|_| self.top()).map(|_| None),
            b'q' | b'r' => {
                let i = self.uint(if op == b'q' { 1 } else { 4 })?;
                self.memo_put(i)
            }
            0x94 => self.memo_put(self.memo.len() as u64),
            op => self.object_op(op).map(Some),
        }
    }

    /// The opcodes that build a container or an object, or read the memo; the
    /// plain values go to [`Self::scalar_op`].
    fn object_op(&mut self, op: u8) -> Result<Value, PickleError> {
        Ok(match op {
            b'2' => self.top()?, // DUP
            // Tuples (frozensets are kept as tuples, sets as lists).
            b')' => self.alloc(Obj::Tuple(Vec::new())),
            b't' | 0x91 => {
                let items = self.pop_mark()?;
                self.alloc(Obj::Tuple(items))
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84); // TUPLE1, TUPLE2, TUPLE3
                let floor = self.marks.last().copied().unwrap_or(0);
                if self.stack.len() < floor + n {
                    return self.err("stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.alloc(Obj::Tuple(items))
            }
            b']' | 0x8f => self.alloc(Obj::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.alloc(Obj::List(items))
            }
            b'}' => self.alloc(Obj::Dict(Vec::new())),
            b'c' => {
                let (module, name) = (self.line()?, self.line()?);
                self.alloc(Obj::Global(module, name))
            }
            0x93 => match (self.pop()?, self.pop()?) {
                (Value::Str(name), Value::Str(module)) => {
                    self.alloc(Obj::Global(module.to_string(), name.to_string()))
                }
                _ => return self.err("STACK_GLOBAL needs two strings"),
            },
            b'R' => {
                let (args, func) = (self.pop()?, self.pop()?);
                self.reduce(&func, &args, 0)?
            }
            0x81 | 0x92 => self.new_object(op)?,
            b'Q' => {
                let pid = self.pop()?;
                self.persistent_load(&pid)?
            }
            b'h' | b'j' => {
                let i = self.uint(if op == b'h' { 1 } else { 4 })?;
                self.memo_get(i)?
            }
            op => self.scalar_op(op)?,
        })
    }

    /// NEWOBJ (cls, args), NEWOBJ_EX (cls, args, kwargs): `cls.__new__(cls)`.
    fn new_object(&mut self, op: u8) -> Result<Value, PickleError> {
        if op == 0x92 {
            self.pop()?;
        }
        self.pop()?;
        let cls = self.pop()?;
        let obj = match self.global(&cls) {
            Some((m, n)) if is_dict_class(m, n) => Obj::Dict(Vec::new()),
            Some((m, n)) => Obj::Other(format!("{m}.{n}")),
            None => Obj::Other("python".into()),
        };
        Ok(self.alloc(obj))
    }

    /// None, booleans, numbers, strings and bytes; any other opcode is refused.
    fn scalar_op(&mut self, op: u8) -> Result<Value, PickleError> {
        Ok(match op {
            b'N' => Value::None,
            0x88 | 0x89 => Value::Bool(op == 0x88),
            b'J' => Value::Int(self.uint(4)? as u32 as i32 as i64), // BININT (signed)
            b'K' => Value::Int(self.uint(1)? as i64),
            b'M' => Value::Int(self.uint(2)? as i64),
            0x8a => Self::long(&self.sized(1)?), // LONG1
            0x8b => Self::long(&self.sized(4)?), // LONG4
            b'G' => self.bytes(8).map(|_| Value::OtherNumber)?, // BINFLOAT
            // BINUNICODE, BINSTRING (python 2); SHORT_BINUNICODE, SHORT_BINSTRING;
            // BINUNICODE8.
            b'X' | b'T' => Value::Str(utf8(&self.sized(4)?)),
            0x8c | b'U' => Value::Str(utf8(&self.sized(1)?)),
            0x8d => Value::Str(utf8(&self.sized(8)?)),
            // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
            b'B' => self.sized(4).map(|_| Value::Bytes)?,
            b'C' => self.sized(1).map(|_| Value::Bytes)?,
            0x8e | 0x96 => self.sized(8).map(|_| Value::Bytes)?,
            op => {
                return self.err(format!(
                    "opcode 0x{op:02x} is not supported (pickle protocols 2 to 5 without \
                     extensions or out-of-band buffers only)"
                ));
            }
        })
    }

    fn global(&self, v: &Value) -> Option<(&str, &str)> {
        match v {
            Value::Obj(i) => match self.heap.get(*i) {
                Some(Obj::Global(m, n)) => Some((m, n)),
                _ => None,
            },
            _ => None,
        }
    }

    fn items(&self, v: &Value) -> Option<Vec<Value>> {
        match v {
            Value::Obj(i) => match self.heap.get(*i) {
                Some(Obj::Tuple(items) | Obj::List(items)) => Some(items.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// APPEND / APPENDS / ADDITEMS to the list (or opaque object) on top of the stack.
    fn append(&mut self, items: Vec<Value>) -> Result<Option<Value>, PickleError> {
        if let Value::Obj(i) = self.top()? {
            match &mut self.heap[i] {
                Obj::List(list) => list.extend(items),
                Obj::Other(_) => {}
                _ => return self.err("APPEND to something that is not a list"),
            }
            return Ok(None);
        }
        self.err("APPEND to something that is not a list")
    }

    /// DICT / SETITEM / SETITEMS on the dict (or opaque object) on top of the stack.
    fn set_items(&mut self, items: Vec<Value>) -> Result<Option<Value>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return self.err("odd number of items for a dict");
        }
        if let Value::Obj(i) = self.top()? {
            match &mut self.heap[i] {
                Obj::Dict(dict) => {
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                }
                Obj::Other(_) => {}
                _ => return self.err("SETITEM on something that is not a dict"),
            }
            return Ok(None);
        }
        self.err("SETITEM on something that is not a dict")
    }

    /// REDUCE: `func(*args)` for the callables a state dict uses; anything else gives an
    /// opaque object.
    fn reduce(&mut self, func: &Value, args: &Value, depth: usize) -> Result<Value, PickleError> {
        let Some(args) = self.items(args) else {
            return self.err("REDUCE arguments are not a tuple");
        };
        let Some((module, name)) = self.global(func) else {
            return Ok(self.alloc(Obj::Other("python".into())));
        };
        let (module, name) = (module.to_string(), name.to_string());
        let obj = match (module.as_str(), name.as_str(), args.as_slice()) {
            (m, n, _) if is_dict_class(m, n) => return self.make_dict(args.first()),
            ("torch._utils", "_rebuild_tensor", [s, o, size, stride])
            | ("torch._utils", "_rebuild_tensor_v2", [s, o, size, stride, _, _, ..]) => {
                Obj::Tensor(Box::new(self.tensor(s, o, size, stride, None)?))
            }
            ("torch._utils", "_rebuild_tensor_v3", [s, o, size, stride, _, _, dtype, ..]) => {
                let kind = match self.global(dtype) {
                    Some(("torch", d)) => dtype_kind(d).ok_or(format!("dtype torch.{d}")),
                    _ => return self.err("_rebuild_tensor_v3: the dtype is not a torch dtype"),
                };
                Obj::Tensor(Box::new(self.tensor(s, o, size, stride, Some(kind))?))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state", [t, ..]) => {
                return Ok(t.clone());
            }
            // A tensor subclass: the plain tensor, without the subclass.
            ("torch._tensor", "_rebuild_from_type_v2" | "_rebuild_from_type", [f, _, a, _])
                if depth < 8 =>
            {
                return self.reduce(f, a, depth + 1);
            }
            ("torch._utils", n, _) if n.starts_with("_rebuild_") => {
                Obj::UnsupportedTensor(format!("torch._utils.{n}"))
            }
            _ => Obj::Other(format!("{module}.{name}")),
        };
        Ok(self.alloc(obj))
    }

    /// `OrderedDict()`, `OrderedDict([(k, v), ...])`, `dict(...)`.
    fn make_dict(&mut self, arg: Option<&Value>) -> Result<Value, PickleError> {
        let mut entries = Vec::new();
        if let Some(Value::Obj(i)) = arg {
            if let Obj::Dict(d) = &self.heap[*i] {
                entries = d.clone();
            } else {
                for pair in self.items(&Value::Obj(*i)).unwrap_or_default() {
                    match self.items(&pair).as_deref() {
                        Some([k, v]) => entries.push((k.clone(), v.clone())),
                        _ => return self.err("dict items must be pairs"),
                    }
                }
            }
        }
        Ok(self.alloc(Obj::Dict(entries)))
    }

    fn int(&self, v: &Value, what: &str) -> Result<i64, PickleError> {
        match v {
            Value::Int(i) => Ok(*i),
            _ => self.err(format!("{what} is not an int")),
        }
    }

    fn ints(&self, v: &Value, what: &str) -> Result<Vec<i64>, PickleError> {
        match self.items(v) {
            Some(items) => items.iter().map(|x| self.int(x, what)).collect(),
            None => self.err(format!("{what} is not a tuple")),
        }
    }

    fn tensor(
        &self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
        kind: Option<Result<Kind, String>>,
    ) -> Result<TensorRef, PickleError> {
        let storage = match storage {
            Value::Obj(i) => match &self.heap[*i] {
                Obj::Storage(s) => (**s).clone(),
                _ => return self.err("a tensor's storage is not a persistent storage id"),
            },
            _ => return self.err("a tensor's storage is not a persistent storage id"),
        };
        let (size, stride) = (
            self.ints(size, "tensor size")?,
            self.ints(stride, "stride")?,
        );
        if size.len() != stride.len() {
            return self.err("tensor size and stride differ in length");
        }
        let kind = kind.unwrap_or(
            storage
                .kind
                .ok_or(format!("storage torch.{}", storage.class)),
        );
        let offset = self.int(offset, "storage offset")?;
        Ok(TensorRef {
            storage,
            kind,
            offset,
            size,
            stride,
        })
    }

    /// `('storage', class, key, location, numel[, (view key, offset, numel) | None])`.
    fn persistent_load(&mut self, pid: &Value) -> Result<Value, PickleError> {
        let pid = self.items(pid).unwrap_or_default();
        let (class, key, numel, view) = match pid.as_slice() {
            [Value::Str(tag), class, key, _location, numel, view @ ..]
                if &**tag == "storage" && view.len() <= 1 =>
            {
                (class, key, numel, view.first())
            }
            // A module class with its source code (legacy files of whole modules).
            [Value::Str(tag), class, ..] if &**tag == "module" => return Ok(class.clone()),
            _ => return self.err("unsupported persistent id (not a torch storage)"),
        };
        let (kind, class) = match self.global(class) {
            Some(("torch" | "torch.storage", c)) => (storage_kind(c), c.to_string()),
            Some((m, c)) => (None, format!("{m}.{c}")),
            None => return self.err("a storage's class is not a class"),
        };
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => return self.err("a storage key is not a string"),
        };
        if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
            return self.err(format!("bad storage key {key:?}"));
        }
        let Ok(numel) = u64::try_from(self.int(numel, "a storage size")?) else {
            return self.err("negative storage size");
        };
        let (view_offset, view_numel) = match view {
            None | Some(Value::None) => (0, numel),
            Some(v) => match self.items(v).as_deref() {
                Some([_, Value::Int(off), Value::Int(n)])
                    if *off >= 0 && *n >= 0 && (*off as u64).saturating_add(*n as u64) <= numel =>
                {
                    (*off as u64, *n as u64)
                }
                _ => return self.err("bad storage view (not inside its storage)"),
            },
        };
        let storage = StorageRef {
            key,
            class,
            kind,
            numel,
            view_offset,
            view_numel,
        };
        Ok(self.alloc(Obj::Storage(Box::new(storage))))
    }
}

fn is_dict_class(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict")
    )
}

/// Typed storage classes (`torch.FloatStorage`, ...) and `torch.UntypedStorage` (bytes).
fn storage_kind(class: &str) -> Option<Kind> {
    Some(match class {
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
        _ => return None,
    })
}

/// `torch.<dtype>` of `_rebuild_tensor_v3`.
fn dtype_kind(dtype: &str) -> Option<Kind> {
    Some(match dtype {
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

/// A state-dict entry: its name and the tensor's heap index.
struct Entry {
    name: String,
    obj: usize,
}

/// The `name -> tensor` entries of the state dict in `u` (see the module docs).
fn select_state_dict(u: &Unpickled) -> Result<Vec<Entry>, String> {
    let Some(Obj::Dict(_)) = u.obj(&u.root) else {
        return Err(format!(
            "the checkpoint holds a {}, not a dict of tensors (a state dict); in python, \
             save model.state_dict() instead",
            u.describe(&u.root)
        ));
    };
    let Some(dict) = find_state_dict(u, &u.root, 0)? else {
        let keys = match u.obj(&u.root) {
            Some(Obj::Dict(d)) => d
                .iter()
                .take(20)
                .map(|(k, v)| match k {
                    Value::Str(s) => format!("{s:?} ({})", u.describe(v)),
                    other => u.describe(other),
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        };
        return Err(format!(
            "no tensors found: the checkpoint is a dict without a state dict in it (keys: \
             {keys})"
        ));
    };
    let Some(Obj::Dict(items)) = u.obj(dict) else {
        return Err("internal: the state dict is not a dict".into());
    };
    // Tensors under string keys, a repeated key keeping its first position and its last
    // value (as a python dict).
    let mut entries: Vec<Entry> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, v) in items {
        let (Value::Str(name), Value::Obj(i)) = (k, v) else {
            continue;
        };
        if !matches!(
            u.heap.get(*i),
            Some(Obj::Tensor(_) | Obj::UnsupportedTensor(_))
        ) {
            continue;
        }
        match seen.get(&**name) {
            Some(&at) => entries[at].obj = *i,
            None => {
                seen.insert(name, entries.len());
                entries.push(Entry {
                    name: name.to_string(),
                    obj: *i,
                });
            }
        }
    }
    // nn.DataParallel's prefix, when every name carries it.
    if entries.iter().all(|e| e.name.starts_with("module.")) {
        for e in &mut entries {
            e.name.drain(.."module.".len());
        }
    }
    Ok(entries)
}

fn holds_tensors(u: &Unpickled, dict: &Value) -> bool {
    match u.obj(dict) {
        Some(Obj::Dict(items)) => items.iter().any(|(k, v)| {
            matches!(k, Value::Str(_))
                && matches!(u.obj(v), Some(Obj::Tensor(_) | Obj::UnsupportedTensor(_)))
        }),
        _ => false,
    }
}

/// `dict` itself if it holds tensors, else the one nested dict that does.
fn find_state_dict<'a>(
    u: &'a Unpickled,
    dict: &'a Value,
    depth: usize,
) -> Result<Option<&'a Value>, String> {
    if holds_tensors(u, dict) {
        return Ok(Some(dict));
    }
    let Some(Obj::Dict(items)) = u.obj(dict) else {
        return Ok(None);
    };
    if depth >= MAX_UNWRAP_DEPTH {
        return Ok(None);
    }
    let mut found: Vec<(&str, &Value)> = Vec::new();
    for (k, v) in items {
        if let (Value::Str(k), Some(Obj::Dict(_))) = (k, u.obj(v))
            && let Some(sd) = find_state_dict(u, v, depth + 1)?
        {
            found.push((k, sd));
        }
    }
    if let Some(&(_, sd)) = PREFERRED_KEYS
        .iter()
        .find_map(|p| found.iter().find(|(k, _)| k == p))
    {
        return Ok(Some(sd));
    }
    match found.as_slice() {
        [] => Ok(None),
        [(_, sd)] => Ok(Some(sd)),
        _ => Err(format!(
            "several nested dicts hold tensors ({}); cannot tell which is the model's state \
             dict",
            found
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

/// Builds the tensors of `entries`, reading each storage once and dropping its bytes
/// after its tensors are built.
fn materialize(
    path: &Path,
    u: &Unpickled,
    entries: &[Entry],
    storages: Storages,
) -> Result<Vec<(String, Tensor)>, PthError> {
    let fail = |key: &str, reason: String| PthError::Tensor {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    // The entries each storage feeds.
    let mut users: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        match &u.heap[e.obj] {
            Obj::Tensor(t) => users.entry(&t.storage.key).or_default().push(i),
            Obj::UnsupportedTensor(why) => {
                return Err(fail(
                    &e.name,
                    format!("{why}: only dense tensors can be read"),
                ));
            }
            _ => unreachable!("select_state_dict keeps tensors only"),
        }
    }
    let all: HashMap<&str, &StorageRef> = u
        .heap
        .iter()
        .filter_map(|o| match o {
            Obj::Storage(s) => Some((s.key.as_str(), &**s)),
            _ => None,
        })
        .collect();
    let mut out: Vec<Option<Tensor>> = entries.iter().map(|_| None).collect();
    storages.read(path, &all, &users, &mut |key, bytes, big_endian| {
        for &i in &users[key] {
            if let Obj::Tensor(t) = &u.heap[entries[i].obj] {
                let t =
                    build_tensor(t, bytes, big_endian).map_err(|r| fail(&entries[i].name, r))?;
                out[i] = Some(t);
            }
        }
        Ok(())
    })?;
    let missing = |e: &Entry| fail(&e.name, "its storage is missing from the file".into());
    entries
        .iter()
        .zip(out)
        .map(|(e, t)| Ok((e.name.clone(), t.ok_or_else(|| missing(e))?)))
        .collect()
}

/// Copies the strided view `t` out of its storage's bytes (the whole storage, not only
/// a legacy view's slice) into a new contiguous CPU tensor.
fn build_tensor(t: &TensorRef, storage: &[u8], big_endian: bool) -> Result<Tensor, String> {
    let kind = t
        .kind
        .clone()
        .map_err(|why| format!("{why}; tch cannot represent its elements"))?;
    let elem = kind.elt_size_in_bytes() as u64;
    // The slice the tensor indexes into, in bytes.
    let s = &t.storage;
    let start = s.view_offset * s.elem_size();
    let end = start + s.view_numel * s.elem_size();
    let slice = storage
        .get(start as usize..end as usize)
        .ok_or_else(|| format!("storage {} is shorter than its view", s.key))?;
    let Some(last) = last_element(t, kind, slice.len() as u64)? else {
        return Tensor::f_empty(t.size.as_slice(), (kind, tch::Device::Cpu))
            .map_err(|e| e.to_string());
    };
    let range = &slice[(t.offset as u64 * elem) as usize..((last + 1) * elem) as usize];
    let range = native_order(range, elem as usize, big_endian);
    // Bools are read as bytes and compared with 0: python writes 0/1, but any other
    // byte must not become an invalid bool.
    let read_kind = if kind == Kind::Bool {
        Kind::Uint8
    } else {
        kind
    };
    let n = (last + 1 - t.offset as u64) as i64;
    let flat = Tensor::f_from_data_size(&range, &[n], read_kind).map_err(|e| e.to_string())?;
    let view = flat
        .f_as_strided(t.size.as_slice(), t.stride.as_slice(), 0)
        .and_then(|v| v.f_contiguous())
        .map_err(|e| e.to_string())?;
    if kind == Kind::Bool {
        view.f_ne(0).map_err(|e| e.to_string())
    } else {
        Ok(view)
    }
}

/// The last element (of `kind`, counted from the slice's start) that the tensor's
/// view reads, checked against the slice of `slice_bytes` bytes; `None` for a tensor
/// without elements.
fn last_element(t: &TensorRef, kind: Kind, slice_bytes: u64) -> Result<Option<u64>, String> {
    let elem = kind.elt_size_in_bytes() as u64;
    let capacity = slice_bytes / elem;
    if t.offset < 0 || t.size.iter().chain(&t.stride).any(|&v| v < 0) {
        return Err(format!(
            "negative offset, size or stride (offset {}, size {:?}, stride {:?})",
            t.offset, t.size, t.stride
        ));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .ok_or("the size overflows")?;
    if numel == 0 {
        return Ok(None);
    }
    // The view reads elements offset..=last.
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset as u64, |acc, (&d, &st)| {
            (d as u64 - 1).checked_mul(st as u64)?.checked_add(acc)
        })
        .ok_or("the view's extent overflows")?;
    if last >= capacity {
        return Err(format!(
            "the view (offset {}, size {:?}, stride {:?}) reaches element {last}, but storage \
             {} holds {capacity} {kind:?} elements",
            t.offset, t.size, t.stride, t.storage.key
        ));
    }
    if numel.saturating_mul(elem) > slice_bytes + MAX_VIEW_BYTES {
        return Err(format!(
            "a view of size {:?} repeats its storage's elements beyond the allowed size",
            t.size
        ));
    }
    Ok(Some(last))
}

/// Elements of `elem` bytes in the machine's (little-endian) order: a big-endian
/// legacy file's elements are byte-swapped.
fn native_order(range: &[u8], elem: usize, big_endian: bool) -> std::borrow::Cow<'_, [u8]> {
    if big_endian && elem > 1 {
        let mut bytes = range.to_vec();
        bytes.chunks_exact_mut(elem).for_each(<[u8]>::reverse);
        bytes.into()
    } else {
        range.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-2 pickle of `OrderedDict([("w", tensor), ("n", 5)])` where the
    /// tensor is `_rebuild_tensor_v2` of a transposed 2x3 view of float storage "0".
    fn tiny_pickle() -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(b"\x80\x02ccollections\nOrderedDict\nq\x00)R(X\x01\x00\x00\x00w");
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n");
        p.extend_from_slice(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        // offset 0, size (3, 2), stride (1, 3), requires_grad False, hooks OrderedDict()
        p.extend_from_slice(b"K\x00K\x03K\x02\x86K\x01K\x03\x86\x89h\x00)RtR");
        p.extend_from_slice(b"X\x01\x00\x00\x00nK\x05u}X\x09\x00\x00\x00_metadataNsb.");
        p
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Runs a pickle and builds its state dict from `storage` (every key's bytes).
    fn load(p: &[u8], storage: &[u8], big_endian: bool) -> Result<Vec<(String, Tensor)>, String> {
        let u = unpickle(&mut &p[..], p.len() as u64, 0).map_err(|e| e.reason)?;
        let entries = select_state_dict(&u)?;
        entries
            .iter()
            .map(|e| match &u.heap[e.obj] {
                Obj::Tensor(t) => Ok((e.name.clone(), build_tensor(t, storage, big_endian)?)),
                _ => Err("not a tensor".to_string()),
            })
            .collect()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
    }

    #[test]
    fn transposed_view_of_a_storage() {
        let sd = load(&tiny_pickle(), &floats(&[0., 1., 2., 3., 4., 5.]), false).unwrap();
        assert_eq!(sd.len(), 1);
        assert_eq!(sd[0].0, "w");
        assert_eq!(sd[0].1.size(), [3, 2]);
        assert_eq!(values(&sd[0].1), [0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn big_endian_storage_is_swapped() {
        let be: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_be_bytes()).collect();
        let sd = load(&tiny_pickle(), &be, true).unwrap();
        assert_eq!(values(&sd[0].1), [0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn rebuild_tensor_of_old_files_and_python2_strings() {
        // PyTorch < 0.4 wrote `_rebuild_tensor(storage, offset, size, stride)`, and
        // python 2 wrote keys as SHORT_BINSTRING; a legacy view of elements 2..6.
        let mut p = Vec::new();
        p.extend_from_slice(b"\x80\x02ccollections\nOrderedDict\nq\x00)R(U\x06weight");
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor\n(");
        p.extend_from_slice(b"(U\x07storagectorch\nFloatStorage\nU\x0214U\x03cpuK\x08");
        p.extend_from_slice(b"(U\x0215K\x02K\x04ttQ");
        p.extend_from_slice(b"K\x01K\x03\x85K\x01\x85tRu.");
        let sd = load(&p, &floats(&[0., 1., 2., 3., 4., 5., 6., 7.]), false).unwrap();
        assert_eq!(sd[0].0, "weight");
        assert_eq!(values(&sd[0].1), [3., 4., 5.]);
    }

    #[test]
    fn view_past_its_storage_is_an_error() {
        let short = floats(&[0., 1., 2., 3., 4.]);
        let err = load(&tiny_pickle(), &short, false).unwrap_err();
        assert!(err.contains("shorter"), "{err}");
        // size (3, 3) with stride (1, 3) reaches element 8 of 6.
        let p = tiny_pickle();
        let at = p.windows(5).position(|w| w == b"K\x03K\x02\x86").unwrap();
        let mut q = p.clone();
        q[at + 3] = 3;
        let err = load(&q, &floats(&[0.; 6]), false).unwrap_err();
        assert!(err.contains("reaches element 8"), "{err}");
    }

    #[test]
    fn long_integers() {
        assert!(matches!(Machine::<&[u8]>::long(&[0xff]), Value::Int(-1)));
        assert!(matches!(
            Machine::<&[u8]>::long(&[0x80, 0]),
            Value::Int(128)
        ));
        assert!(matches!(Machine::<&[u8]>::long(&[]), Value::Int(0)));
        assert!(matches!(
            Machine::<&[u8]>::long(&[0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Value::OtherNumber
        ));
        assert!(matches!(
            Machine::<&[u8]>::long(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Value::Int(-2)
        ));
        assert!(matches!(
            Machine::<&[u8]>::long(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]),
            Value::OtherNumber
        ));
    }

    #[test]
    fn deep_nesting_and_self_reference_do_not_overflow() {
        // ((((...)))) 200,000 deep, then a list that contains itself, then a dict.
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 200_000));
        p.extend_from_slice(b"0]q\x00h\x00a0}.");
        let u = unpickle(&mut &p[..], p.len() as u64, 0).unwrap();
        let err = select_state_dict(&u).err().unwrap();
        assert!(err.contains("no tensors"), "{err}");
    }

    #[test]
    fn mutated_pickles_never_panic() {
        let p = tiny_pickle();
        let storage = floats(&[0.; 6]);
        for len in 0..p.len() {
            let _ = load(&p[..len], &storage, false);
        }
        for i in 0..p.len() {
            for b in [
                0u8, 1, 2, 0x7f, 0x80, 0xff, b'(', b't', b'R', b'Q', b'h', b'.',
            ] {
                let mut q = p.clone();
                q[i] = b;
                let _ = load(&q, &storage, false);
            }
        }
    }

    #[test]
    fn module_prefix_is_removed_only_when_every_name_has_it() {
        let p = tiny_pickle();
        let at = p
            .windows(5)
            .position(|w| w == b"\x01\x00\x00\x00w")
            .unwrap();
        let mut q = p[..at].to_vec();
        q.extend_from_slice(b"\x08\x00\x00\x00module.w");
        q.extend_from_slice(&p[at + 5..]);
        let sd = load(&q, &floats(&[0.; 6]), false).unwrap();
        assert_eq!(sd[0].0, "w");
    }
}
