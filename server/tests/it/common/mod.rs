//! The server's own helpers of the integration tests: a tiny exported model, the real
//! `lse-serve` binary on a loopback port, and a minimal HTTP/1.1 client on
//! `std::net::TcpStream` (no client library, so malformed requests are easy too).
//! Running the workspace's other binaries and the venv's Python come from
//! `lse-test-support`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use image::{ImageFormat, RgbImage};
use lse_test_support::{beside, ok};

/// How long a test waits for something that must happen before it gives up: a guard
/// against hanging, never a bound a test asserts (the server's own timeouts are far
/// shorter).
pub const HANG_GUARD: Duration = Duration::from_secs(300);

/// The admin token the tests start servers with (`--admin-token-file`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The header that carries [`ADMIN_TOKEN`].
pub const ADMIN: &[(&str, &str)] = &[("Authorization", "Bearer test-admin-token-0123456789")];

/// The `lse-serve` binary under test.
pub fn lse_serve() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lse-serve"))
}

/// A workspace binary that these tests need but Cargo does not build for them
/// (`lse`, `lse-train`), beside `lse-serve`.
pub fn workspace_bin(name: &str) -> PathBuf {
    beside(lse_serve(), name)
}

/// A width-1/8 FCN8s at a 64x32 training size, exported once per test binary.
pub fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "lse-server-{}",
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .map(|s| s
                    .rsplit_once('-')
                    .map_or(s.clone(), |(name, _hash)| name.to_string()))
                .unwrap_or_default()
        ));
        export_tiny(&dir, 7)
    })
}

/// Exports a width-1/8 FCN8s with initialisation seed `seed` at a 64x32 training size
/// to `dir/model.onnx`.
pub fn export_tiny(dir: &Path, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the test model folder");
    let train = workspace_bin("lse-train");
    let ckpt = path_str(&dir.join("tiny.safetensors"));
    let onnx = dir.join("model.onnx");
    lse_test_support::init_tiny(&train, &ckpt, seed);
    ok(
        &train,
        &[
            "export",
            &ckpt,
            "--out",
            &path_str(&onnx),
            "--train-size",
            "64x32",
        ],
    );
    std::fs::remove_file(&ckpt).expect("remove the checkpoint");
    onnx
}

/// A path as a command-line argument (the tests' temporary paths are UTF-8).
pub fn path_str(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_string()
}

/// A running `lse-serve`; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The gRPC address, when started with `--grpc-addr`.
    pub grpc: Option<SocketAddr>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `lse-serve --model <tiny model> --addr 127.0.0.1:0 ARGS` and waits until ready.
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(None, true, args)
    }

    /// Starts `lse-serve --model <tiny model> --admin-token-file <a file of ADMIN_TOKEN>
    /// ARGS`: the admin routes answer requests with [`ADMIN`].
    pub fn start_admin(args: &[&str]) -> Self {
        Self::launch(lse_serve(), None, true, true, args)
    }

    /// Starts the server in `cwd`; `with_model` adds `--model <tiny model>`.
    pub fn start_in(cwd: Option<&Path>, with_model: bool, args: &[&str]) -> Self {
        Self::start_exe(lse_serve(), cwd, with_model, args)
    }

    /// Starts the binary `exe` (a copy of lse-serve) in `cwd`.
    pub fn start_exe(exe: &Path, cwd: Option<&Path>, with_model: bool, args: &[&str]) -> Self {
        Self::launch(exe, cwd, with_model, false, args)
    }

    /// Starts `exe` in `cwd`; `with_model` adds `--model <tiny model>`, `admin` an
    /// `--admin-token-file` holding [`ADMIN_TOKEN`].
    fn launch(
        exe: &Path,
        cwd: Option<&Path>,
        with_model: bool,
        admin: bool,
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(exe);
        if with_model {
            cmd.arg("--model").arg(model());
        }
        if admin {
            let token = dir.path().join("admin-token");
            std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).expect("write the admin token");
            cmd.arg("--admin-token-file").arg(token);
        }
        cmd.args(["--addr", "127.0.0.1:0"]).args(args);
        if let Some(c) = cwd {
            cmd.current_dir(c);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start lse-serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send((false, a.trim().to_string()));
                } else if let Some(a) = line.strip_prefix("grpc listening on ") {
                    let _ = tx.send((true, a.trim().to_string()));
                }
            }
        });
        let mut grpc = None;
        let addr = loop {
            match rx.recv_timeout(HANG_GUARD) {
                Ok((true, a)) => grpc = Some(a.parse().expect("a socket address")),
                Ok((false, a)) => break a.parse().expect("a socket address"),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "lse-serve did not print `listening on ADDR`; its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        let server = Self {
            child,
            addr,
            grpc,
            log,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    pub fn wait_ready(&self) {
        let t0 = Instant::now();
        loop {
            if get(self.addr, "/readyz").is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(
                t0.elapsed() < HANG_GUARD,
                "server not ready after {HANG_GUARD:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal with the `kill` command.
    pub fn signal(&self, sig: &str) {
        ok(
            Path::new("kill"),
            &[&format!("-{sig}"), &self.pid().to_string()],
        );
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                t0.elapsed() < limit,
                "lse-serve did not exit within {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a JSON error answer `{"error", "detail"}` with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "no detail: {v}"
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{:?}",
            self.headers
        );
    }
}

/// Sends raw bytes (a whole request) and reads the answer to the end.
pub fn raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(HANG_GUARD))?;
    s.set_write_timeout(Some(HANG_GUARD))?;
    s.write_all(request)?;
    read_response(&mut s)
}

/// Reads an HTTP/1.1 answer until the server closes the connection.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<Resp> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf)
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

pub fn parse_response(buf: &[u8]) -> std::io::Result<Resp> {
    let mut rest = buf;
    // Skip interim answers (100 Continue).
    loop {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad(format!("no header end in {} bytes", rest.len())))?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|e| bad(e.to_string()))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad(format!("bad status line in {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let body = &rest[end + 4..];
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(body)?
        } else if let Some((_, n)) = headers.iter().find(|(k, _)| k == "content-length") {
            let n: usize = n.parse().map_err(|_| bad("bad content-length"))?;
            if body.len() < n {
                return Err(bad(format!("body has {} of {n} bytes", body.len())));
            }
            body[..n].to_vec()
        } else {
            body.to_vec()
        };
        return Ok(Resp {
            status,
            headers,
            body,
        });
    }
}

fn dechunk(mut b: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("bad chunk"))?;
        let size_str = std::str::from_utf8(&b[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Builds a request with `Connection: close` and a `Content-Length`.
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    raw(addr, &request_bytes(addr, method, path, headers, body))
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Resp> {
    send(addr, "GET", path, &[], &[])
}

pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Resp {
    send(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/octet-stream")],
        body,
    )
    .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// A test picture with structure at every scale (deterministic).
pub fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = x.wrapping_mul(31 + seed) ^ y.wrapping_mul(17 + 3 * seed);
        let sky = y * 3 < h;
        let road = y * 3 > 2 * h;
        if sky {
            image::Rgb([70 + (x % 20) as u8, 130, 180 + (seed % 50) as u8])
        } else if road {
            image::Rgb([128, 64 + (v % 40) as u8, 128])
        } else {
            image::Rgb([
                (v % 251) as u8,
                ((v / 3) % 241) as u8,
                ((x + y + seed) % 199) as u8,
            ])
        }
    })
}

pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), format)
        .expect("encode");
    out
}

pub fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    encode(&picture(w, h, seed), ImageFormat::Png)
}

/// Decodes a PNG answer.
pub fn decode(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory_with_format(bytes, ImageFormat::Png).unwrap_or_else(|e| {
        panic!(
            "not a PNG ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    })
}

/// Reads one value of a metric line `name{labels} value` from the exposition text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Whether the server closed `s` (EOF or reset), whatever it sent first; false if it
/// was still open after [`HANG_GUARD`].
pub fn read_until_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut;
            }
        }
    }
}

/// Reads one answer with a Content-Length from a kept-alive connection.
pub fn read_one(s: &mut TcpStream) -> Resp {
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                return parse_response(&buf).unwrap();
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until `done` holds, checking every few milliseconds; panics after
/// [`HANG_GUARD`], naming `what` it waited for.
pub fn wait_until(what: &str, done: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(
            t0.elapsed() < HANG_GUARD,
            "waited {HANG_GUARD:?} for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The server's `/metrics` text.
pub fn metrics_text(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The value of one series of `/metrics`; 0 for a series not recorded yet.
pub fn metric_value(addr: SocketAddr, series: &str) -> f64 {
    metric(&metrics_text(addr), series).unwrap_or(0.0)
}

/// Polls `/metrics` until the series `series` (0 while not recorded) satisfies `ok`;
/// panics after [`HANG_GUARD`]. Returns the value.
pub fn wait_for_metric(addr: SocketAddr, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let t0 = Instant::now();
    loop {
        // A poll may fail while the server is busy with the test's other connections.
        let v = get(addr, "/metrics")
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| metric(&r.text(), series).unwrap_or(0.0));
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            t0.elapsed() < HANG_GUARD,
            "{series} never reached the expected value (last {v:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `POST /v1/models/NAME/ACTION` with the admin token (`load`, `pause`, `resume`);
/// asserts a 200 answer.
pub fn admin(addr: SocketAddr, name: &str, action: &str) -> serde_json::Value {
    let path = format!("/v1/models/{name}/{action}");
    let r = send(addr, "POST", &path, ADMIN, b"").unwrap_or_else(|e| panic!("POST {path}: {e}"));
    assert_eq!(r.status, 200, "POST {path}: {}", r.text());
    r.json()
}
