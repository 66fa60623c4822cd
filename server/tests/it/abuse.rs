//! The server against hostile and careless clients: a sealed model dir, admin routes
//! behind a token, metric labels that clients cannot multiply, early answers that
//! reach clients sending their whole body first, a warm-up failure answered at once,
//! the memory budget's refusals, and the gRPC port held to HTTP's limits. Needs
//! `lse-train` built (`cargo build --workspace`) and the venv's Python.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use common::*;
use lse_test_support::{check_ok, python};

/// A model folder `dir` with `default` (the tiny model) and a token file; returns
/// the `--model-dir` and `--admin-token-file` arguments' paths.
fn model_dir(tmp: &Path) -> (String, String) {
    let dir = tmp.join("models");
    std::fs::create_dir_all(dir.join("default")).unwrap();
    std::fs::copy(model(), dir.join("default/model.onnx")).unwrap();
    let token = tmp.join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    (path_str(&dir), path_str(&token))
}

fn load(a: SocketAddr, name: &str, headers: &[(&str, &str)]) -> Resp {
    send(a, "POST", &format!("/v1/models/{name}/load"), headers, b"").unwrap()
}

#[cfg(unix)]
#[test]
fn the_model_dir_is_sealed_and_loads_need_the_admin_token() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, token) = model_dir(tmp.path());
    let dir_path = Path::new(&dir);
    // A folder outside the model dir with a good model, linked in as `evil`; a link
    // inside the dir (`alias` -> `default`) is fine.
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(model(), outside.join("model.onnx")).unwrap();
    symlink(&outside, dir_path.join("evil")).unwrap();
    symlink(dir_path.join("default"), dir_path.join("alias")).unwrap();
    let server = Server::start_in(
        None,
        false,
        &["--model-dir", &dir, "--admin-token-file", &token],
    );
    let a = server.addr;
    let root = tmp.path().to_string_lossy().into_owned();

    let listed = get(a, "/v1/models").unwrap();
    let names: Vec<String> = listed.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["alias", "default"], "{}", listed.text());
    assert!(!listed.text().contains(&root), "{}", listed.text());
    let model = get(a, "/v1/model").unwrap();
    assert!(!model.text().contains(&root), "{}", model.text());
    assert_eq!(model.json()["model"]["path"], "default/model.onnx");

    // Without the token, or with a wrong one: 403, nothing loaded.
    load(a, "default", &[]).assert_error(403, "forbidden");
    load(
        a,
        "default",
        &[("Authorization", "Bearer wrong-token-000000000")],
    )
    .assert_error(403, "forbidden");
    // A link out of the dir is refused, even with the token.
    let r = load(a, "evil", ADMIN);
    r.assert_error(403, "outside_model_dir");
    assert!(!r.text().contains(&root), "{}", r.text());
    assert!(get(a, "/v1/model?model=evil").unwrap().status == 404);
    // A long name is refused in a short answer that names no path.
    let r = load(a, &"n".repeat(20_000), ADMIN);
    r.assert_error(400, "bad_model_name");
    assert!(r.body.len() < 300, "{}", r.text());
    let r = load(a, "missing", ADMIN);
    r.assert_error(404, "unknown_model");
    assert!(!r.text().contains(&root), "{}", r.text());
    // A corrupt model (put in after the start): the error names the model once, and no server path.
    std::fs::create_dir_all(dir_path.join("broken")).unwrap();
    std::fs::write(dir_path.join("broken/model.onnx"), b"not a model").unwrap();
    let r = load(a, "broken", ADMIN);
    r.assert_error(422, "load_failed");
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(!detail.contains(&root), "{detail}");
    assert_eq!(detail.matches("cannot load model").count(), 1, "{detail}");
    assert!(detail.contains("broken/model.onnx"), "{detail}");
    // With the token, a load inside the dir works.
    let r = load(a, "default", ADMIN);
    assert_eq!(r.status, 200, "{}", r.text());

    // A server without --admin-token-file refuses every load.
    std::fs::remove_dir_all(dir_path.join("broken")).unwrap();
    let open = Server::start_in(None, false, &["--model-dir", &dir]);
    load(open.addr, "default", ADMIN).assert_error(403, "forbidden");
}

/// Sends `request` on a kept-alive connection and reads the answer.
fn keep_alive(s: &mut TcpStream, request: &str) -> Resp {
    s.write_all(request.as_bytes()).unwrap();
    read_one(s)
}

fn request_series(a: SocketAddr) -> Vec<String> {
    get(a, "/metrics")
        .unwrap()
        .text()
        .lines()
        .filter(|l| l.starts_with("lse_http_requests_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn a_thousand_distinct_methods_routes_and_models_add_no_series() {
    let server = Server::start(&[]);
    let a = server.addr;
    let mut s = TcpStream::connect(a).unwrap();
    let kinds = |i: usize| {
        [
            format!("M{i} /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            format!("GET /nope/{i} HTTP/1.1\r\nHost: x\r\n\r\n"),
            format!("GET /v1/model?model=m{i} HTTP/1.1\r\nHost: x\r\n\r\n"),
            format!("GET /v2/models/m{i}/ready HTTP/1.1\r\nHost: x\r\n\r\n"),
        ]
    };
    for r in kinds(0) {
        let resp = keep_alive(&mut s, &r);
        assert!(resp.status >= 400, "{r}: {}", resp.status);
    }
    request_series(a); // the series of /metrics itself
    let before = request_series(a);
    for i in 1..=1000 {
        for r in kinds(i) {
            keep_alive(&mut s, &r);
        }
    }
    let after = request_series(a);
    assert_eq!(before, after);
    assert!(
        after.iter().any(|l| l.contains("method=\"other\"")),
        "{after:?}"
    );
}

/// Sends a 4 MiB body with `http.client` to each route that answers before reading
/// the body; each answer must be the JSON error, and the connection must be reused.
const EARLY_ANSWERS: &str = r#"
import http.client, json, sys
host, port = sys.argv[1], int(sys.argv[2])
body = b"\0" * (4 << 20)
conn = http.client.HTTPConnection(host, port, timeout=120)
cases = [
    ("POST", "/v1/segment?model=nope", 404, "unknown_model"),
    ("POST", "/v1/segment?output=nope", 400, "bad_output"),
    ("POST", "/no/such/route", 404, "not_found"),
    ("PUT", "/v1/segment", 405, "method_not_allowed"),
    ("POST", "/v1/models/default/load", 403, "forbidden"),
    ("POST", "/v1/segment?model=a&model=b", 400, "bad_query"),
]
conn.connect()
port_used = conn.sock.getsockname()
for method, path, status, code in cases:
    conn.request(method, path, body=body, headers={"Content-Type": "image/png"})
    r = conn.getresponse()
    got = json.loads(r.read())
    assert (r.status, got["error"]) == (status, code), (method, path, r.status, got)
    assert not r.will_close, (method, path, "closed")
    assert conn.sock is not None and conn.sock.getsockname() == port_used, (method, path, "reconnected")
print("ok")
"#;

#[test]
fn early_answers_reach_clients_that_send_the_whole_body_and_keep_the_connection() {
    let server = Server::start(&[]);
    let (host, port) = (server.addr.ip().to_string(), server.addr.port().to_string());
    check_ok(Command::new(python()).args(["-c", EARLY_ANSWERS, &host, &port]));
}

/// Makes a copy of the tiny model whose `scores` go through a Reshape that cannot
/// hold them: it loads (the contract's names are all there) and fails its first run.
const BREAK_MODEL: &str = r#"
import sys, numpy as np, onnx
from onnx import helper, numpy_helper
m = onnx.load(sys.argv[1])
g = m.graph
for n in g.node:
    n.output[:] = ["scores_pre" if o == "scores" else o for o in n.output]
    n.input[:] = ["scores_pre" if i == "scores" else i for i in n.input]
g.initializer.append(numpy_helper.from_array(np.array([7, -1, 3, 5], dtype=np.int64), "bad_shape"))
g.node.append(helper.make_node("Reshape", ["scores_pre", "bad_shape"], ["scores"]))
for o in g.output:
    if o.name == "scores":
        o.type.tensor_type.ClearField("shape")
onnx.save(m, sys.argv[2])
"#;

#[test]
fn a_model_that_fails_its_warm_up_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, token) = model_dir(tmp.path());
    let server = Server::start_in(
        None,
        false,
        &["--model-dir", &dir, "--admin-token-file", &token],
    );
    let bad = Path::new(&dir).join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    check_ok(Command::new(python()).args([
        "-c",
        BREAK_MODEL,
        &path_str(model()),
        &path_str(&bad.join("model.onnx")),
    ]));
    let r = load(server.addr, "bad", ADMIN);
    r.assert_error(422, "load_failed");
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("failed its warm-up"), "{detail}");
    assert!(!detail.contains(&*tmp.path().to_string_lossy()), "{detail}");
    // The served model is untouched and other loads go on.
    assert_eq!(load(server.addr, "default", ADMIN).status, 200);
    assert_eq!(get(server.addr, "/v1/model?model=bad").unwrap().status, 404);
}

fn v2_png_request(images: usize, output: &str, binary: bool) -> Vec<u8> {
    let png = png(40, 30, 1);
    let mut data = Vec::new();
    for _ in 0..images {
        data.extend_from_slice(&(png.len() as u32).to_le_bytes());
        data.extend_from_slice(&png);
    }
    let head = serde_json::json!({
        "inputs": [{"name": "image", "shape": [images], "datatype": "BYTES",
                    "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": output, "parameters": {"binary_data": binary}}],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&data);
    let mut req = format!(
        "POST /v2/models/default/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Inference-Header-Content-Length: {}\r\nContent-Length: {}\r\n\r\n",
        head.len(),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[test]
fn the_memory_budget_refuses_before_computing() {
    // scores of the tiny model: 19 x 32 x 64 FP32 per image = 155,648 bytes binary,
    // 622,592 as JSON (16 bytes per value); labels of a 40x30 image: 1,200 bytes
    // binary, 4,800 as JSON.
    let server = Server::start(&["--max-answer-mb", "1", "--max-request-pixels", "5000"]);
    let a = server.addr;
    let r = raw(a, &v2_png_request(3, "scores", false)).unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    let v = r.json();
    assert_eq!(v["code"], "answer_too_large", "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("--max-answer-mb 1") && e.contains("`scores` for 3 images"),
        "{e}"
    );
    // The same as binary fits (466,944 bytes), and so do labels.
    let r = raw(a, &v2_png_request(3, "scores", true)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = raw(a, &v2_png_request(4, "labels", false)).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Five 40x30 images are 6,000 pixels: over --max-request-pixels 5000.
    let r = raw(a, &v2_png_request(5, "labels", true)).unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], "too_many_pixels", "{}", r.text());
    assert!(r.text().contains("6000 pixels"), "{}", r.text());
    // /v1 holds one image to the smaller of the two pixel limits.
    post(a, "/v1/segment", &png(100, 60, 1)).assert_error(413, "too_many_pixels");
}

#[test]
fn smaller_refusals() {
    let server = Server::start(&[]);
    let a = server.addr;
    // A model named twice.
    post(a, "/v1/segment?model=default&model=other", &png(40, 30, 1))
        .assert_error(400, "bad_query");
    // A multipart form with two files.
    let png = png(40, 30, 1);
    let mut body = Vec::new();
    for name in ["a.png", "b.png"] {
        body.extend_from_slice(
            format!(
                "--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&png);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--XX--\r\n");
    let r = send(
        a,
        "POST",
        "/v1/segment",
        &[("Content-Type", "multipart/form-data; boundary=XX")],
        &body,
    )
    .unwrap();
    r.assert_error(400, "bad_body");
    assert!(r.text().contains("2 file fields"), "{}", r.text());
}

/// The server's HTTP/2 SETTINGS frame: (identifier, value) pairs.
fn h2_settings(s: &mut TcpStream) -> Vec<(u16, u32)> {
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // an empty SETTINGS frame
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

/// An over-size message through the official gRPC client: RESOURCE_EXHAUSTED.
const GRPC_TOO_LARGE: &str = r#"
import sys, numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException
c = tgrpc.InferenceServerClient(sys.argv[1])
i = tgrpc.InferInput("image", [1], "BYTES")
i.set_data_from_numpy(np.array([b"\0" * (2 << 20)], dtype=np.object_))
try:
    c.infer("default", [i])
    sys.exit("an over-size message was accepted")
except InferenceServerException as e:
    assert str(e.status()) == "StatusCode.RESOURCE_EXHAUSTED", (e.status(), e.message())
    assert "--max-body-mb" in e.message(), e.message()
print("ok")
"#;

#[test]
fn the_grpc_port_is_held_to_the_http_limits() {
    let server = Server::start(&[
        "--grpc-addr",
        "127.0.0.1:0",
        "--header-timeout-ms",
        "300",
        "--idle-timeout-ms",
        "500",
        "--max-streams",
        "7",
        "--max-body-mb",
        "1",
    ]);
    let g = server.grpc.expect("a gRPC address");
    // Per-connection concurrency, as HTTP/2 announces it.
    let mut s = TcpStream::connect(g).unwrap();
    assert!(h2_settings(&mut s).contains(&(3, 7)));
    drop(s);
    // A half-sent preface and a silent connection are closed.
    let mut half = TcpStream::connect(g).unwrap();
    half.write_all(b"PRI * HTT").unwrap();
    let mut silent = TcpStream::connect(g).unwrap();
    assert!(read_until_closed(&mut half), "a half-sent preface is held");
    assert!(
        read_until_closed(&mut silent),
        "a silent connection is held"
    );
    // Their timeouts closed them.
    for timeout in ["header", "idle"] {
        let series =
            format!("lse_connections_timed_out_total{{port=\"grpc\",timeout=\"{timeout}\"}}");
        assert!(metric_value(server.addr, &series) >= 1.0, "{series}");
    }
    // The official client still works, and an over-size message is RESOURCE_EXHAUSTED.
    check_ok(Command::new(python()).args(["-c", GRPC_TOO_LARGE, &g.to_string()]));
}

#[test]
fn the_grpc_port_has_a_connection_cap() {
    // No timeout can close a connection during the test.
    let server = Server::start(&[
        "--grpc-addr",
        "127.0.0.1:0",
        "--max-connections",
        "3",
        "--idle-timeout-ms",
        "600000",
    ]);
    let (a, g) = (server.addr, server.grpc.expect("a gRPC address"));
    let open = "lse_connections_open{port=\"grpc\"}";
    // Three held: the server takes them without waiting for a byte.
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(g).unwrap()).collect();
    wait_for_metric(a, open, |v| v == 3.0);
    // A fourth waits in the backlog until one closes (the gauge never exceeds the cap).
    let mut fourth = TcpStream::connect(g).unwrap();
    fourth
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    fourth.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(metric_value(a, open), 3.0);
    drop(held);
    fourth.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut byte = [0u8; 1];
    fourth.read_exact(&mut byte).unwrap();
}
