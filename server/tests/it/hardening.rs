//! Connection-level hardening: the 413 answer reaches clients that send their whole
//! body before reading (with a Content-Length or chunked), slow headers and idle
//! connections are cut off by their timeouts (as the server's metrics count them)
//! while other clients are served, and the connection cap holds. No assertion here is
//! about time: a test waits for the server to act, and its only clock is a hang guard.
//! Needs `lse-train` built (`cargo build --workspace`).

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

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

/// The connections of the HTTP port that `timeout` (`header`, `idle`) has closed.
fn timed_out(a: SocketAddr, timeout: &str) -> f64 {
    metric_value(
        a,
        &format!("lse_connections_timed_out_total{{port=\"http\",timeout=\"{timeout}\"}}"),
    )
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

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
        assert!(read_until_closed(s), "slow connection {i} was not closed");
    }
    // Closed by the header timeout, each of them; the idle one (a minute) closed none.
    assert_eq!(timed_out(a, "header"), 50.0);
    assert_eq!(timed_out(a, "idle"), 0.0);
    assert_eq!(get(a, "/healthz").unwrap().status, 200);
}

#[test]
fn connection_cap_holds_and_frees() {
    // No timeout can close a connection during the test.
    let server = Server::start(&[
        "--max-connections",
        "2",
        "--header-timeout-ms",
        "600000",
        "--idle-timeout-ms",
        "600000",
    ]);
    let a = server.addr;
    // Two kept-alive connections, each answered once: the server holds both.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.write_all(GET_HEALTHZ).unwrap();
            assert_eq!(read_one(&mut s).status, 200);
            s
        })
        .collect();
    // A third connection sends its request; it waits in the kernel's backlog.
    let mut third = TcpStream::connect(a).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    // The server has the two open, not the third (the gauge never exceeds the cap).
    held[0]
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let text = read_one(&mut held[0]).text();
    assert_eq!(
        metric(&text, "lse_connections_open{port=\"http\"}"),
        Some(2.0),
        "{text}"
    );
    // Closing one lets the third in.
    drop(held.pop());
    third.set_read_timeout(Some(HANG_GUARD)).unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn idle_connections_are_closed_while_others_are_served() {
    // The header timeout is far longer than the test: only the idle timer can close.
    let server =
        Server::start_admin(&["--idle-timeout-ms", "1000", "--header-timeout-ms", "600000"]);
    let a = server.addr;
    // Another client's request stays in progress all along: the model is paused until
    // the idle connections have been closed.
    admin(a, "default", "pause");
    let mut busy = TcpStream::connect(a).unwrap();
    let body = png(40, 30, 2);
    let mut req = format!(
        "POST /v1/segment?output=trainids HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    busy.write_all(&req).unwrap();
    wait_for_metric(a, "lse_requests_in_progress", |v| v == 1.0);
    // One request, then silence.
    let mut idle = TcpStream::connect(a).unwrap();
    idle.write_all(GET_HEALTHZ).unwrap();
    assert_eq!(read_one(&mut idle).status, 200);
    // Connected, never a byte.
    let silent = TcpStream::connect(a).unwrap();
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, no request.
    let mut h2 = TcpStream::connect(a).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    for (what, mut s) in [("idle", idle), ("silent", silent), ("HTTP/2", h2)] {
        assert!(
            read_until_closed(&mut s),
            "the {what} connection was not closed"
        );
    }
    // The idle timer closed them (at least these three); the header timer none.
    assert!(timed_out(a, "idle") >= 3.0, "{}", metrics_text(a));
    assert_eq!(timed_out(a, "header"), 0.0);
    // The connection whose request is in progress outlived them and is answered.
    admin(a, "default", "resume");
    let r = read_one(&mut busy);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn an_idle_kept_alive_connection_outlives_the_header_timeout() {
    // The header timeout is far shorter than the idle one: a kept-alive connection
    // that waits between requests is held to the idle timeout only, while a header
    // that has begun is still held to the header timeout.
    let server = Server::start(&["--header-timeout-ms", "300", "--idle-timeout-ms", "600000"]);
    let a = server.addr;
    let mut kept = TcpStream::connect(a).unwrap();
    kept.write_all(GET_HEALTHZ).unwrap();
    assert_eq!(read_one(&mut kept).status, 200);
    // Two half-sent headers, one after the other, each closed by the header timeout:
    // by then `kept` has waited longer than twice the header timeout.
    for i in 0..2 {
        let mut half = TcpStream::connect(a).unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
        assert!(
            read_until_closed(&mut half),
            "half-sent header {i} was not closed"
        );
    }
    kept.write_all(GET_HEALTHZ).unwrap();
    assert_eq!(read_one(&mut kept).status, 200);
    assert_eq!(timed_out(a, "header"), 2.0);
    assert_eq!(timed_out(a, "idle"), 0.0);
}
