//! TensorRT engine and timing caches, shape profiles and the build shared by every
//! session of a process (and of the processes that share a cache folder).
//!
//! - The engine cache lives in `<root>/<key>/`, where the key names the model's
//!   SHA-256, the precision, the TensorRT version, the GPU and the shape profile
//!   ([`CacheKey`]), so a changed model, precision, TensorRT or GPU never reuses a stale
//!   engine. The timing cache, valid for every model on one GPU and TensorRT version,
//!   lives in `<root>/timing-<trt>-<gpu>/`. The root is `--trt-cache DIR`, else
//!   `$XDG_CACHE_HOME/lse/tensorrt`, else `~/.cache/lse/tensorrt` ([`default_root`]).
//! - The shape profile is explicit ([`Profile`]): batch 1 to the largest batch at the
//!   model's training size, optimised for the largest batch, so TensorRT builds the
//!   engine once when the session is created instead of on the first run.
//! - [`BuildLock`] serialises the sessions that use one cache folder: the first
//!   builds and writes the engine, the others wait and load it (a cache hit), across
//!   threads (a server's workers) and processes (`flock`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use sha2::{Digest, Sha256};

use crate::contract::Precision;

/// Errors of preparing a TensorRT cache.
#[derive(Debug, thiserror::Error)]
pub enum TrtError {
    #[error(
        "no cache folder for TensorRT engines: neither XDG_CACHE_HOME nor HOME is set (pass --trt-cache DIR)"
    )]
    NoCacheDir,
    #[error("TensorRT cache {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("cannot read model {path} to hash it: {message}")]
    Model { path: PathBuf, message: String },
}

/// The default cache root: `$XDG_CACHE_HOME/lse/tensorrt`, else `$HOME/.cache/lse/tensorrt`.
pub fn default_root() -> Result<PathBuf, TrtError> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(x) = nonempty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(x).join("lse/tensorrt"));
    }
    nonempty("HOME")
        .map(|h| PathBuf::from(h).join(".cache/lse/tensorrt"))
        .ok_or(TrtError::NoCacheDir)
}

/// An explicit TensorRT optimisation profile for the `image` input (`N x 3 x H x W`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub min: [usize; 4],
    pub opt: [usize; 4],
    pub max: [usize; 4],
}

impl Profile {
    /// Batch 1 to `max_batch` (at least 1) at the training size `[w, h]`, optimised for
    /// `max_batch`.
    pub fn for_model(train_size: [u32; 2], max_batch: usize) -> Self {
        let (w, h) = (train_size[0] as usize, train_size[1] as usize);
        let b = max_batch.max(1);
        Self {
            min: [1, 3, h, w],
            opt: [b, 3, h, w],
            max: [b, 3, h, w],
        }
    }

    /// ORT's shape string for one input: `image:1x3x512x1024`.
    fn shape(input: &str, dims: [usize; 4]) -> String {
        let d: Vec<String> = dims.iter().map(usize::to_string).collect();
        format!("{input}:{}", d.join("x"))
    }

    /// The largest batch the engine accepts.
    pub fn max_batch(&self) -> usize {
        self.max[0]
    }
}

/// The hardware and library a TensorRT engine is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// TensorRT's version, e.g. `10.13.0` (`unknown` if libnvinfer could not be asked).
    pub trt_version: String,
    /// The GPU's name and compute capability, e.g. `NVIDIA H200 sm90`.
    pub gpu: String,
}

/// Everything that makes one engine different from another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// SHA-256 of the model file, hex.
    pub model_sha256: String,
    pub precision: Precision,
    pub target: Target,
    pub profile: Profile,
}

/// Lower-case ASCII letters, digits, `.` and `-`; everything else becomes `-`.
fn slug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        out.push(if c.is_ascii_alphanumeric() || c == '.' {
            c
        } else {
            '-'
        });
    }
    out.trim_matches('-').to_string()
}

impl CacheKey {
    /// The engine folder's name: readable, and different whenever an input differs.
    pub fn dir_name(&self) -> String {
        let p = &self.profile;
        format!(
            "{}-{}-trt{}-{}-b{}to{}x{}x{}",
            &self.model_sha256[..16.min(self.model_sha256.len())],
            self.precision,
            slug(&self.target.trt_version),
            slug(&self.target.gpu),
            p.min[0],
            p.max[0],
            p.max[3],
            p.max[2]
        )
    }

    /// The timing cache's folder name (shared by every model on this GPU and TensorRT).
    pub fn timing_dir_name(&self) -> String {
        format!(
            "timing-trt{}-{}",
            slug(&self.target.trt_version),
            slug(&self.target.gpu)
        )
    }
}

/// What the cache needs from a model file before a session exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Its `metadata_props` (the training size sets the shape profile).
    pub props: BTreeMap<String, String>,
}

/// Reads, hashes and scans `path` once per (path, length, modification time), so the
/// workers of a server hash a model once.
pub fn read_model(path: &Path) -> Result<Arc<ModelFile>, TrtError> {
    type Memo = Mutex<HashMap<(PathBuf, u64, std::time::SystemTime), Arc<ModelFile>>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let err = |message: String| TrtError::Model {
        path: path.to_path_buf(),
        message,
    };
    let md = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let modified = md.modified().map_err(|e| err(e.to_string()))?;
    let id = (path.to_path_buf(), md.len(), modified);
    let memo = MEMO.get_or_init(Default::default);
    if let Some(m) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Ok(m.clone());
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let file = Arc::new(ModelFile {
        sha256: sha256_hex(&bytes),
        props: metadata_props(&bytes).map_err(err)?,
    });
    memo.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, file.clone());
    Ok(file)
}

/// Reads a protobuf varint at `*at`.
fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or("truncated varint")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// The top-level fields of a protobuf message: `(field number, bytes)` for the
/// length-delimited ones (others are skipped).
fn fields(b: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let len = match key & 7 {
            0 => {
                varint(b, &mut at)?;
                continue;
            }
            1 => 8,
            2 => usize::try_from(varint(b, &mut at)?).map_err(|e| e.to_string())?,
            5 => 4,
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        let end = at.checked_add(len).filter(|&e| e <= b.len());
        let end = end.ok_or("a field runs past the end of the file")?;
        if key & 7 == 2 {
            out.push((key >> 3, &b[at..end]));
        }
        at = end;
    }
    Ok(out)
}

/// The `metadata_props` (ModelProto field 14: StringStringEntryProto, key 1, value 2)
/// of an ONNX file, read without an ONNX library.
pub fn metadata_props(model: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut props = BTreeMap::new();
    for (_, entry) in fields(model)?.into_iter().filter(|(f, _)| *f == 14) {
        let (mut k, mut v) = (String::new(), String::new());
        for (f, bytes) in fields(entry)? {
            let s = String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?;
            match f {
                1 => k = s,
                2 => v = s,
                _ => {}
            }
        }
        props.insert(k, v);
    }
    Ok(props)
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where one engine's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePaths {
    pub engine_dir: PathBuf,
    pub timing_dir: PathBuf,
}

impl CachePaths {
    pub fn new(root: &Path, key: &CacheKey) -> Self {
        Self {
            engine_dir: root.join(key.dir_name()),
            timing_dir: root.join(key.timing_dir_name()),
        }
    }

    /// Creates both folders.
    pub fn create(&self) -> Result<(), TrtError> {
        for d in [&self.engine_dir, &self.timing_dir] {
            std::fs::create_dir_all(d).map_err(|e| TrtError::Io {
                path: d.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Whether an engine was built into this folder before.
    pub fn has_engine(&self) -> bool {
        std::fs::read_dir(&self.engine_dir).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "engine"))
        })
    }
}

/// The TensorRT provider options (ONNX Runtime's names) for one engine.
pub fn provider_options(
    key: &CacheKey,
    paths: &CachePaths,
    device_id: i32,
) -> Vec<(&'static str, String)> {
    let p = &key.profile;
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let input = crate::contract::INPUT;
    vec![
        ("device_id", device_id.to_string()),
        ("trt_fp16_enable", flag(key.precision == Precision::Fp16)),
        // A QDQ model's scales are explicit quantization: no calibration table.
        ("trt_int8_enable", flag(key.precision == Precision::Int8)),
        ("trt_engine_cache_enable", flag(true)),
        (
            "trt_engine_cache_path",
            paths.engine_dir.display().to_string(),
        ),
        ("trt_timing_cache_enable", flag(true)),
        (
            "trt_timing_cache_path",
            paths.timing_dir.display().to_string(),
        ),
        ("trt_profile_min_shapes", Profile::shape(input, p.min)),
        ("trt_profile_opt_shapes", Profile::shape(input, p.opt)),
        ("trt_profile_max_shapes", Profile::shape(input, p.max)),
    ]
}

/// Serialises engine builds on one cache folder: a process-wide mutex per folder (the
/// workers of a server) and an exclusive `flock` on `<folder>/.lock` (other processes).
/// Held while the session is created; the first holder builds, the rest load.
pub struct BuildLock {
    _file: File,
    _guard: MutexGuard<'static, ()>,
}

impl BuildLock {
    pub fn acquire(engine_dir: &Path) -> Result<Self, TrtError> {
        static LOCKS: OnceLock<Mutex<HashMap<PathBuf, &'static Mutex<()>>>> = OnceLock::new();
        let m: &'static Mutex<()> = {
            let mut map = LOCKS
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            map.entry(engine_dir.to_path_buf())
                .or_insert_with(|| Box::leak(Box::new(Mutex::new(()))))
        };
        let guard = m.lock().unwrap_or_else(|e| e.into_inner());
        let path = engine_dir.join(".lock");
        let io = |e: std::io::Error| TrtError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(Self {
            _file: file,
            _guard: guard,
        })
    }
}

/// Asks libnvinfer and the CUDA driver what an engine would be built for; a part that
/// cannot be asked reads `unknown` (the key still changes when it becomes known).
pub fn probe_target(device_id: i32) -> Target {
    Target {
        trt_version: probe::trt_version().unwrap_or_else(|| "unknown".into()),
        gpu: probe::gpu(device_id).unwrap_or_else(|| format!("unknown-gpu{device_id}")),
    }
}

/// Shared so that callers can keep one [`Target`] per device.
pub fn cached_target(device_id: i32) -> Arc<Target> {
    static T: OnceLock<Mutex<HashMap<i32, Arc<Target>>>> = OnceLock::new();
    let mut map = T
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(device_id)
        .or_insert_with(|| Arc::new(probe_target(device_id)))
        .clone()
}

mod probe {
    use std::ffi::{c_char, c_int};

    use libloading::{Library, Symbol};

    fn open(names: &[&str]) -> Option<Library> {
        // SAFETY: loading NVIDIA's libraries runs their initialisers, which have no
        // preconditions; the same libraries ONNX Runtime's providers load.
        names.iter().find_map(|n| unsafe { Library::new(*n) }.ok())
    }

    /// `getInferLibVersion()` of libnvinfer: major * 10000 + minor * 100 + patch.
    pub fn trt_version() -> Option<String> {
        let lib = open(&["libnvinfer.so.10", "libnvinfer.so"])?;
        // SAFETY: `int32_t getInferLibVersion()` is TensorRT's C entry point, no arguments.
        let v = unsafe {
            let f: Symbol<unsafe extern "C" fn() -> i32> = lib.get(b"getInferLibVersion").ok()?;
            f()
        };
        Some(format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100))
    }

    /// The device's name and compute capability through the CUDA driver API.
    pub fn gpu(device_id: i32) -> Option<String> {
        let lib = open(&["libcuda.so.1", "libcuda.so"])?;
        type Init = unsafe extern "C" fn(u32) -> c_int;
        type Get = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
        type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
        type Attr = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
        // SAFETY: the driver API's documented signatures; every out-pointer points to a
        // live local of the right size.
        unsafe {
            let init: Symbol<Init> = lib.get(b"cuInit").ok()?;
            let get: Symbol<Get> = lib.get(b"cuDeviceGet").ok()?;
            let name: Symbol<Name> = lib.get(b"cuDeviceGetName").ok()?;
            let attr: Symbol<Attr> = lib.get(b"cuDeviceGetAttribute").ok()?;
            if init(0) != 0 {
                return None;
            }
            let mut dev = 0;
            if get(&mut dev, device_id) != 0 {
                return None;
            }
            let mut buf = [0 as c_char; 256];
            if name(buf.as_mut_ptr(), buf.len() as c_int, dev) != 0 {
                return None;
            }
            let (mut major, mut minor) = (0, 0);
            // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
            attr(&mut major, 75, dev);
            attr(&mut minor, 76, dev);
            let n = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy();
            Some(format!("{n} sm{major}{minor}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey {
            model_sha256: sha256_hex(b"model bytes"),
            precision: Precision::Fp16,
            target: Target {
                trt_version: "10.13.0".into(),
                gpu: "NVIDIA H200 sm90".into(),
            },
            profile: Profile::for_model([1024, 512], 8),
        }
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let base = key();
        let name = base.dir_name();
        assert_eq!(
            name,
            format!(
                "{}-fp16-trt10.13.0-nvidia-h200-sm90-b1to8x1024x512",
                &base.model_sha256[..16]
            )
        );
        let mut k = base.clone();
        k.model_sha256 = sha256_hex(b"model bytes!");
        assert_ne!(k.dir_name(), name, "model bytes");
        let mut k = base.clone();
        k.precision = Precision::Fp32;
        assert_ne!(k.dir_name(), name, "precision");
        let mut k = base.clone();
        k.target.trt_version = "10.14.1".into();
        assert_ne!(k.dir_name(), name, "TensorRT version");
        assert_ne!(k.timing_dir_name(), base.timing_dir_name());
        let mut k = base.clone();
        k.target.gpu = "NVIDIA A100 sm80".into();
        assert_ne!(k.dir_name(), name, "GPU");
        let mut k = base.clone();
        k.profile = Profile::for_model([1024, 512], 4);
        assert_ne!(k.dir_name(), name, "profile");
        assert_eq!(
            k.timing_dir_name(),
            base.timing_dir_name(),
            "one timing cache per GPU and TensorRT"
        );
    }

    /// A protobuf length-delimited field.
    fn ld(field: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![(field << 3) | 2, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn metadata_props_are_read_from_the_bytes() {
        let entry = |k: &str, v: &str| ld(14, &[ld(1, k.as_bytes()), ld(2, v.as_bytes())].concat());
        // ir_version (varint), a graph to skip, two entries.
        let mut m = vec![0x08, 0x08];
        m.extend(ld(7, &[1, 2, 3, 4]));
        m.extend(entry("lse.train_size", "[64,32]"));
        m.extend(entry("other", "x"));
        let props = metadata_props(&m).unwrap();
        assert_eq!(props["lse.train_size"], "[64,32]");
        assert_eq!(props["other"], "x");
        assert_eq!(props.len(), 2);
        m.truncate(m.len() - 1);
        assert!(metadata_props(&m).unwrap_err().contains("past the end"));
    }

    #[test]
    fn model_hash_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.onnx");
        std::fs::write(&p, ld(6, b"first")).unwrap();
        let a = read_model(&p).unwrap();
        assert_eq!(a.sha256, sha256_hex(&ld(6, b"first")));
        std::fs::write(&p, ld(6, b"second, longer")).unwrap();
        assert_eq!(
            read_model(&p).unwrap().sha256,
            sha256_hex(&ld(6, b"second, longer"))
        );
        let err = read_model(&dir.path().join("missing.onnx")).unwrap_err();
        assert!(err.to_string().contains("missing.onnx"), "{err}");
    }

    #[test]
    fn provider_options_carry_precision_caches_and_profile() {
        let k = key();
        let paths = CachePaths::new(Path::new("/c"), &k);
        let opts: HashMap<_, _> = provider_options(&k, &paths, 3).into_iter().collect();
        assert_eq!(opts["device_id"], "3");
        assert_eq!(opts["trt_fp16_enable"], "1");
        assert_eq!(opts["trt_engine_cache_enable"], "1");
        assert_eq!(opts["trt_timing_cache_enable"], "1");
        assert_eq!(
            opts["trt_engine_cache_path"],
            format!("/c/{}", k.dir_name())
        );
        assert_eq!(
            opts["trt_timing_cache_path"],
            "/c/timing-trt10.13.0-nvidia-h200-sm90"
        );
        assert_eq!(opts["trt_profile_min_shapes"], "image:1x3x512x1024");
        assert_eq!(opts["trt_profile_opt_shapes"], "image:8x3x512x1024");
        assert_eq!(opts["trt_profile_max_shapes"], "image:8x3x512x1024");
        let mut k32 = k.clone();
        k32.precision = Precision::Fp32;
        let o32: HashMap<_, _> = provider_options(&k32, &paths, 0).into_iter().collect();
        assert_eq!(o32["trt_fp16_enable"], "0");
        assert_eq!(o32["trt_int8_enable"], "0");
        k32.precision = Precision::Int8;
        let o8: HashMap<_, _> = provider_options(&k32, &paths, 0).into_iter().collect();
        assert_eq!(
            (&*o8["trt_fp16_enable"], &*o8["trt_int8_enable"]),
            ("0", "1")
        );
    }

    #[test]
    fn engine_files_mark_a_hit_and_the_lock_serialises() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CachePaths::new(dir.path(), &key());
        assert!(!paths.has_engine());
        paths.create().unwrap();
        assert!(!paths.has_engine());
        let lock = BuildLock::acquire(&paths.engine_dir).unwrap();
        // A second holder in another thread waits until the first is dropped.
        let (tx, rx) = std::sync::mpsc::channel();
        let dir2 = paths.engine_dir.clone();
        let t = std::thread::spawn(move || {
            let _l = BuildLock::acquire(&dir2).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
        std::fs::write(paths.engine_dir.join("TRTKernel_graph_1_fp16.engine"), b"x").unwrap();
        drop(lock);
        rx.recv().unwrap();
        t.join().unwrap();
        assert!(paths.has_engine());
    }

    #[test]
    fn slug_keeps_keys_path_safe() {
        assert_eq!(
            slug("NVIDIA GeForce RTX 4090/x sm89"),
            "nvidia-geforce-rtx-4090-x-sm89"
        );
    }
}
