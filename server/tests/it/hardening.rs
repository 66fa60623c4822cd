//! Connection-level hardening: the 413 answer reaches clients that send their whole
//! body before reading (with a Content-Length or chunked), slow headers and idle
//! connections are cut off while other clients are served, and the connection cap
//! holds. Needs `lse-train` built (`cargo build --workspace`).

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use lse_test_support::{check_ok, python};

/// Posts 64 MiB the way `requests`/`urllib` do (the whole body, then the answer).
const BIG_POST: &str = r#"
import json, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=b"\0" * (64 << 20), headers={"Content-Type": "image/png"})
try:
    urllib.request.urlopen(req)
    sys.exit("the server accepted 64 MiB")
except urllib.error.HTTPError as e:
    body = json.loads(e.read())
    assert e.code == 413 and body["error"] == "body_too_large", (e.code, body)
print("ok")
"#;

#[test]
fn over_limit_body_gets_413_json_when_sent_whole() {
    let server = Server::start(&["--max-body-mb", "1"]);
    let py = python();
    for route in ["/v1/segment", "/v2/models/default/infer"] {
        let url = format!("http://{}{route}", server.addr);
        check_ok(Command::new(&py).args(["-c", BIG_POST, &url]));
    }
    // The connection stays usable for the next request.
    assert_eq!(get(server.addr, "/healthz").unwrap().status, 200);
}

/// Posts 64 MiB with `Transfer-Encoding: chunked` and no length, the whole body
/// before the answer, then reuses the connection.
const BIG_CHUNKED_POST: &str = r#"
import http.client, json, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection(host, port, timeout=120)
chunks = (b"\0" * (1 << 20) for _ in range(64))
headers = {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}
conn.request("POST", path, body=chunks, headers=headers, encode_chunked=True)
r = conn.getresponse()
body = json.loads(r.read())
assert r.status == 413 and body["error"] == "body_too_large", (r.status, body)
conn.request("GET", "/healthz")
r = conn.getresponse()
assert r.status == 200, r.status
r.read()
print("ok")
"#;

#[test]
fn over_limit_chunked_body_gets_413_json_when_sent_whole() {
    let server = Server::start(&["--max-body-mb", "1"]);
    let py = python();
    let (host, port) = (server.addr.ip().to_string(), server.addr.port().to_string());
    for route in ["/v1/segment", "/v2/models/default/infer"] {
        check_ok(Command::new(&py).args(["-c", BIG_CHUNKED_POST, &host, &port, route]));
    }
    // A chunked body within the limit is still served.
    let body = png(40, 30, 3);
    let mut req = format!(
        "POST /v1/segment?output=trainids HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = raw(server.addr, &req).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Whether the server closed `s` (EOF or reset) before its read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

#[test]
fn slow_headers_are_closed_while_others_are_served() {
    let server = Server::start(&["--header-timeout-ms", "500"]);
    let a = server.addr;
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.write_all(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-")
                .unwrap();
            s
        })
        .collect();
    let r = post(a, "/v1/segment?output=trainids", &png(40, 30, 2));
    assert_eq!(r.status, 200, "{}", r.text());
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(s), "slow connection {i} was not closed");
    }
    assert_eq!(get(a, "/healthz").unwrap().status, 200);
}

#[test]
fn connection_cap_holds_and_frees() {
    let server = Server::start(&["--max-connections", "2", "--header-timeout-ms", "60000"]);
    let a = server.addr;
    // Wait until the server is idle: the readiness probes' connections have closed.
    std::thread::sleep(Duration::from_millis(200));
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(a).unwrap()).collect();
    let mut third = TcpStream::connect(a).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 512];
    let early = third.read(&mut buf);
    assert!(
        early.is_err(),
        "a third connection was served beside two open ones: {early:?}"
    );
    drop(idle);
    third
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn idle_connections_are_closed_while_others_are_served() {
    // The header timeout is far longer than the test: only the idle timer can close.
    let server = Server::start(&["--idle-timeout-ms", "1000", "--header-timeout-ms", "30000"]);
    let a = server.addr;
    let get_healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // One request, then silence.
    let mut idle = TcpStream::connect(a).unwrap();
    idle.write_all(get_healthz).unwrap();
    assert_eq!(read_one(&mut idle).status, 200);
    // Connected, never a byte.
    let silent = TcpStream::connect(a).unwrap();
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, no request.
    let mut h2 = TcpStream::connect(a).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let t0 = Instant::now();
    let watch = |mut s: TcpStream| std::thread::spawn(move || read_until_closed(&mut s));
    let (idle, silent, h2) = (watch(idle), watch(silent), watch(h2));
    // Meanwhile a busy kept-alive connection is served, request after request.
    let mut busy = TcpStream::connect(a).unwrap();
    let mut served = 0;
    let all_closed = || idle.is_finished() && silent.is_finished() && h2.is_finished();
    while !all_closed() && t0.elapsed() < Duration::from_secs(10) {
        busy.write_all(get_healthz).unwrap();
        assert_eq!(read_one(&mut busy).status, 200, "request {served}");
        served += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(idle.join().unwrap(), "the idle connection was not closed");
    assert!(
        silent.join().unwrap(),
        "the silent connection was not closed"
    );
    assert!(h2.join().unwrap(), "the HTTP/2 connection was not closed");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(served > 0);
    let r = post(a, "/v1/segment?output=trainids", &png(40, 30, 2));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn an_idle_kept_alive_connection_outlives_the_header_timeout() {
    // The header timeout is far shorter than the idle one: a kept-alive connection
    // that waits between requests is held to the idle timeout only, while a header
    // that has begun is still held to the header timeout.
    let server = Server::start(&["--header-timeout-ms", "300", "--idle-timeout-ms", "30000"]);
    let a = server.addr;
    let get_healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut kept = TcpStream::connect(a).unwrap();
    kept.write_all(get_healthz).unwrap();
    assert_eq!(read_one(&mut kept).status, 200);
    let mut half = TcpStream::connect(a).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    kept.write_all(get_healthz).unwrap();
    assert_eq!(read_one(&mut kept).status, 200);
    assert!(
        closed_by_server(&mut half),
        "the half-sent header was not closed"
    );
}
