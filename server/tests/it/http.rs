//! Integration tests: the real `lse-serve` binary with a tiny exported model on a
//! loopback port. Needs `lse-train` and `lse` built (`cargo build --workspace`).

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::Arc;

use common::*;
use image::ImageFormat;
use lse_test_support::ok;

#[test]
fn every_endpoint_answers() {
    let server = Server::start(&[]);
    let a = server.addr;

    let r = get(a, "/healthz").unwrap();
    assert_eq!((r.status, r.json()["status"].clone()), (200, "ok".into()));
    let r = get(a, "/readyz").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");

    let r = get(a, "/v1/model").unwrap();
    assert_eq!(r.status, 200);
    let m = r.json();
    assert_eq!(m["metadata"]["train_size"], serde_json::json!([64, 32]));
    assert_eq!(m["metadata"]["class_names"].as_array().unwrap().len(), 19);
    assert_eq!(m["contract"]["input"]["name"], "image");
    let model_id = m["model"]["id"].as_str().unwrap().to_string();
    let (name, hash) = model_id.rsplit_once('-').unwrap();
    assert!(
        !name.is_empty() && hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "model id {model_id}"
    );

    let r = get(a, "/").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        r.text().contains("/v1/segment"),
        "the page posts to the API"
    );

    let r = get(a, "/v1/sample.png?width=80&height=40").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(decode(&r.body).to_rgb8().dimensions(), (80, 40));

    // Every output of one image, all consistent with each other.
    let img = picture(64, 48, 1);
    let body = encode(&img, ImageFormat::Png);
    let train = post(a, "/v1/segment?output=trainids", &body);
    assert_eq!(train.status, 200, "{}", train.text());
    assert_eq!(train.header("content-type"), Some("image/png"));
    assert_eq!(train.header("x-lse-model"), Some(model_id.as_str()));
    let train = decode(&train.body).to_luma8();
    assert_eq!(train.dimensions(), (64, 48));
    assert!(train.pixels().all(|p| p[0] < 19));

    let meta = &m["metadata"];
    let label_of = |t: u8| meta["label_ids"][t as usize].as_u64().unwrap() as u8;
    let color_of = |t: u8| -> [u8; 3] {
        let c = &meta["colors"][t as usize];
        [0, 1, 2].map(|k| c[k].as_u64().unwrap() as u8)
    };

    let labels = post(a, "/v1/segment", &body);
    assert_eq!(labels.status, 200);
    let labels = decode(&labels.body).to_luma8();
    for (l, t) in labels.pixels().zip(train.pixels()) {
        assert_eq!(l[0], label_of(t[0]));
    }
    let explicit = post(a, "/v1/segment?output=labelids", &body);
    assert_eq!(decode(&explicit.body).to_luma8(), labels);

    let color = post(a, "/v1/segment?output=color", &body);
    assert_eq!(color.status, 200);
    let color = decode(&color.body).to_rgb8();
    for (c, t) in color.pixels().zip(train.pixels()) {
        assert_eq!(c.0, color_of(t[0]));
    }

    let overlay = post(a, "/v1/segment?output=overlay", &body);
    assert_eq!(overlay.status, 200);
    let overlay = decode(&overlay.body).to_rgb8();
    assert_eq!(overlay.dimensions(), (64, 48));
    for ((o, c), p) in overlay.pixels().zip(color.pixels()).zip(img.pixels()) {
        for k in 0..3 {
            let want = (p[k] as f32 * 0.5 + c[k] as f32 * 0.5).round() as i32;
            assert!((o[k] as i32 - want).abs() <= 1, "{o:?} {c:?} {p:?}");
        }
    }

    let js = post(a, "/v1/segment?output=json", &body);
    assert_eq!(js.status, 200);
    assert_eq!(js.header("content-type"), Some("application/json"));
    let js = js.json();
    assert_eq!(
        (js["width"].as_u64(), js["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(js["model"], model_id.as_str());
    let mut counts = HashMap::new();
    for p in train.pixels() {
        *counts.entry(p[0] as u64).or_insert(0u64) += 1;
    }
    let classes = js["classes"].as_array().unwrap();
    assert_eq!(classes.len(), counts.len(), "{js}");
    let mut share_sum = 0.0;
    for c in classes {
        let t = c["train_id"].as_u64().unwrap();
        assert_eq!(c["pixels"].as_u64(), counts.get(&t).copied(), "{c}");
        assert_eq!(c["name"], meta["class_names"][t as usize]);
        assert_eq!(c["color"], meta["colors"][t as usize]);
        share_sum += c["share"].as_f64().unwrap();
    }
    assert!((share_sum - 1.0).abs() < 1e-9);
    for k in ["decode", "queue", "inference", "postprocess", "total"] {
        assert!(js["timings_ms"][k].as_f64().is_some(), "timing {k}: {js}");
    }

    // The same image as a multipart form and as a JPEG.
    let boundary = "lse-test-boundary-7MA4YWxkTrZu0gW";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&body);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = send(
        a,
        "POST",
        "/v1/segment?output=trainids",
        &[("Content-Type", &ct)],
        &form,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(decode(&r.body).to_luma8(), train);

    let jpeg = encode(&img, ImageFormat::Jpeg);
    let r = post(a, "/v1/segment?output=trainids", &jpeg);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(decode(&r.body).to_luma8().dimensions(), (64, 48));

    // The metrics saw all of this.
    let text = get(a, "/metrics").unwrap();
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = text.text();
    for series in [
        "lse_http_requests_total{route=\"/v1/segment\",method=\"POST\",status=\"200\"}",
        "lse_http_request_duration_seconds_count{route=\"/v1/segment\"}",
        "lse_batch_size_count",
        "lse_inference_seconds_count",
        "lse_queue_depth",
        "lse_workers_ready",
    ] {
        assert!(metric(&text, series).is_some(), "no {series} in\n{text}");
    }
    assert!(
        metric(
            &text,
            "lse_http_requests_total{route=\"/v1/segment\",method=\"POST\",status=\"200\"}"
        )
        .unwrap()
            >= 8.0
    );
    assert!(metric(&text, "lse_inference_seconds_count").unwrap() >= 8.0);
}

#[test]
fn bad_input_is_refused_with_4xx() {
    let server = Server::start(&["--max-body-mb", "1", "--max-pixels", "20000"]);
    let a = server.addr;
    let good = png(64, 48, 2);
    let jpeg = encode(&picture(64, 48, 2), ImageFormat::Jpeg);

    post(a, "/v1/segment", b"").assert_error(400, "empty_body");
    post(a, "/v1/segment", b"this is plainly not an image").assert_error(400, "not_an_image");
    post(a, "/v1/segment", &good[..good.len() / 2]).assert_error(400, "bad_image");
    post(a, "/v1/segment", &good[..30]).assert_error(400, "bad_image");
    post(a, "/v1/segment", &jpeg[..jpeg.len() * 2 / 3]).assert_error(400, "bad_image");
    post(a, "/v1/segment", b"GIF89a\x40\x00\x30\x00\x80\x00\x00")
        .assert_error(415, "unsupported_format");
    let bmp = encode_bmp_header();
    post(a, "/v1/segment", &bmp).assert_error(415, "unsupported_format");

    // Over the body limit: declared length (refused before the body is read) ...
    let req = format!(
        "POST /v1/segment HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    raw(a, req.as_bytes())
        .unwrap()
        .assert_error(413, "body_too_large");
    // ... and a chunked body that turns out too long (by a few bytes at its very end, so
    // the server has read everything when it answers and closes).
    let mut req = format!(
        "POST /v1/segment HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let chunk = vec![b'x'; 256 * 1024];
    for piece in [&chunk[..], &chunk[..], &chunk[..], &chunk[..], &chunk[..16]] {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    raw(a, &req).unwrap().assert_error(413, "body_too_large");

    // More pixels than allowed: a real image, and a header that claims 100000 x 100000
    // pixels with no pixel data behind it (refused from the header alone).
    post(a, "/v1/segment", &png(200, 101, 3)).assert_error(413, "too_many_pixels");
    post(a, "/v1/segment", &huge_png_header()).assert_error(413, "too_many_pixels");

    post(a, "/v1/segment?output=svg", &good).assert_error(400, "bad_output");
    post(a, "/v1/segment?output=", &good).assert_error(400, "bad_output");
    get(a, "/v1/segment")
        .unwrap()
        .assert_error(405, "method_not_allowed");
    send(a, "DELETE", "/v1/model", &[], &[])
        .unwrap()
        .assert_error(405, "method_not_allowed");
    post(a, "/healthz", &good).assert_error(405, "method_not_allowed");
    get(a, "/v2/segment")
        .unwrap()
        .assert_error(404, "not_found");
    post(a, "/v1/segmentation", &good).assert_error(404, "not_found");

    // A multipart form without any field.
    let boundary = "b0undary";
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = send(
        a,
        "POST",
        "/v1/segment",
        &[("Content-Type", &ct)],
        format!("--{boundary}--\r\n").as_bytes(),
    )
    .unwrap();
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());

    // Garbage at the HTTP level is answered by the HTTP layer, not a crash.
    let r = raw(a, b"NOT-HTTP\r\n\r\n");
    if let Ok(r) = r {
        assert!((400..500).contains(&r.status), "{}", r.status);
    }

    // Still healthy, and no 5xx was ever counted (but /readyz's 503 during warm-up).
    let r = post(a, "/v1/segment", &good);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = get(a, "/metrics").unwrap().text();
    assert!(
        !text
            .lines()
            .filter(|l| !l.contains("route=\"/readyz\""))
            .any(|l| l.starts_with("lse_http_requests_total") && l.contains("status=\"5")),
        "{text}"
    );
}

/// The first bytes of a BMP file (a format the server does not take).
fn encode_bmp_header() -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&[0u8; 60]);
    b
}

/// A PNG whose (valid) header declares 100000 x 100000 pixels, with no pixel data.
fn huge_png_header() -> Vec<u8> {
    let mut p = png(1, 1, 0);
    p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut c = 0xFFFF_FFFFu32;
    for &b in &p[12..29] {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    p[29..33].copy_from_slice(&(!c).to_be_bytes());
    p
}

#[test]
fn concurrent_answers_equal_lse_segment() {
    let lse = workspace_bin("lse");
    let dir = tempfile::tempdir().unwrap();
    let sizes = [
        (64, 48),
        (50, 37),
        (80, 60),
        (33, 65),
        (64, 32),
        (100, 20),
        (17, 23),
        (96, 72),
    ];
    let mut inputs = Vec::new();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let path = dir.path().join(format!("img{i}.png"));
        let bytes = png(w, h, i as u32 + 10);
        std::fs::write(&path, &bytes).unwrap();
        inputs.push((path, bytes));
    }
    let out = dir.path().join("lse");
    let mut args = vec!["segment".to_string(), path_str(model())];
    args.extend(inputs.iter().map(|(p, _)| path_str(p)));
    args.extend(["--out".to_string(), path_str(&out)]);
    ok(&lse, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let expected: Vec<image::GrayImage> = (0..inputs.len())
        .map(|i| {
            let p = out.join(format!("img{i}_labelIds.png"));
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            decode(&bytes).to_luma8()
        })
        .collect();
    let distinct: BTreeSet<u8> = expected
        .iter()
        .flat_map(|e| e.pixels().map(|p| p[0]))
        .collect();
    assert!(
        distinct.len() > 1,
        "the test model predicts one class only: {distinct:?}"
    );

    let server = Server::start_admin(&[
        "--workers",
        "1",
        "--queue",
        "128",
        "--max-batch",
        "8",
        "--batch-wait-ms",
        "20",
    ]);
    let a = server.addr;
    // The 64 requests wait in the paused model's queue, then its one worker takes them
    // eight at a time.
    admin(a, "default", "pause");
    let inputs = Arc::new(inputs);
    let threads: Vec<_> = (0..64)
        .map(|k| {
            let inputs = inputs.clone();
            std::thread::spawn(move || {
                let i = k % inputs.len();
                (i, post(a, "/v1/segment", &inputs[i].1))
            })
        })
        .collect();
    wait_for_metric(a, "lse_queue_depth", |v| v == 64.0);
    admin(a, "default", "resume");
    let mut batch_sizes = BTreeSet::new();
    for t in threads {
        let (i, r) = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        batch_sizes.insert(
            r.header("x-lse-batch-size")
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
        let got = decode(&r.body).to_luma8();
        assert_eq!(got.dimensions(), expected[i].dimensions());
        let differ = got
            .pixels()
            .zip(expected[i].pixels())
            .filter(|(g, e)| g != e)
            .count();
        assert_eq!(
            differ, 0,
            "image {i}: {differ} pixels differ from lse segment"
        );
    }
    assert_eq!(
        batch_sizes,
        BTreeSet::from([8]),
        "64 queued requests were not run in batches of --max-batch"
    );
}

#[test]
fn queue_overflow_gives_503_then_recovers() {
    let server = Server::start_admin(&[
        "--workers",
        "1",
        "--threads",
        "1",
        "--max-batch",
        "1",
        "--queue",
        "1",
    ]);
    let a = server.addr;
    let body = Arc::new(png(80, 60, 5));
    // Pausing is an admin route.
    let r = send(a, "POST", "/v1/models/default/pause", &[], b"").unwrap();
    r.assert_error(403, "forbidden");
    // A request takes the only place and waits in the paused model's queue.
    let paused = admin(a, "default", "pause");
    assert_eq!(
        (paused["name"].as_str(), paused["paused"].as_bool()),
        (Some("default"), Some(true))
    );
    let listed = get(a, "/v1/models").unwrap().json();
    assert_eq!(listed["models"][0]["paused"], true, "{listed}");
    let held = {
        let body = body.clone();
        std::thread::spawn(move || post(a, "/v1/segment", &body))
    };
    wait_for_metric(a, "lse_queue_depth", |v| v == 1.0);
    assert_eq!(metric_value(a, "lse_requests_in_progress"), 1.0);
    // The next one is refused at once, with a time to retry after.
    let r = post(a, "/v1/segment", &body);
    r.assert_error(503, "queue_full");
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u32>().is_ok()),
        "{:?}",
        r.headers
    );
    // The held one is answered once the model runs again.
    assert_eq!(admin(a, "default", "resume")["paused"], false);
    let r = held.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Recovered: requests one after another all succeed.
    for _ in 0..5 {
        let r = post(a, "/v1/segment", &body);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let text = metrics_text(a);
    assert_eq!(
        metric(
            &text,
            "lse_http_requests_total{route=\"/v1/segment\",method=\"POST\",status=\"503\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "lse_requests_in_progress"), Some(0.0));
}

#[test]
fn slow_requests_get_504() {
    let server = Server::start_admin(&["--timeout-ms", "3000", "--workers", "1", "--threads", "1"]);
    let a = server.addr;
    let small = png(64, 48, 1);
    let r = post(a, "/v1/segment", &small);
    assert_eq!(r.status, 200, "{}", r.text());
    let runs = "lse_batch_size_count";
    assert_eq!(metric_value(a, runs), 1.0);
    // A request whose image waits in the paused model's queue past the time limit.
    admin(a, "default", "pause");
    post(a, "/v1/segment", &small).assert_error(504, "timeout");
    // Its place is given back at once; its image is still queued.
    let text = metrics_text(a);
    assert_eq!(
        metric(&text, "lse_requests_in_progress"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(metric(&text, "lse_queue_depth"), Some(1.0), "{text}");
    assert_eq!(get(a, "/healthz").unwrap().status, 200);
    // Resumed, the worker drops the abandoned image without running it, and the server
    // keeps serving.
    admin(a, "default", "resume");
    wait_for_metric(a, "lse_queue_depth", |v| v == 0.0);
    assert_eq!(metric_value(a, runs), 1.0, "the abandoned image was run");
    let r = post(a, "/v1/segment", &small);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn sigterm_finishes_requests_in_flight() {
    let mut server = Server::start_admin(&["--workers", "1", "--threads", "1", "--max-batch", "1"]);
    let a = server.addr;
    // Every request is inside the server (admitted, waiting in the paused model's
    // queue) when the signal comes.
    admin(a, "default", "pause");
    let body = Arc::new(png(320, 240, 4));
    let n = 6;
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || post(a, "/v1/segment", &body))
        })
        .collect();
    wait_for_metric(a, "lse_requests_in_progress", |v| v == n as f64);
    server.signal("TERM");
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(decode(&r.body).to_luma8().dimensions(), (320, 240));
    }
    let status = server.wait_exit(HANG_GUARD);
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log_text()
    );
    assert!(
        get(a, "/healthz").is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn default_model_and_missing_model() {
    // Without --model, models/default/model.onnx is found above the executable: run a
    // link of the binary from <dir>/bin with the model in <dir>/models/default.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sub = dir.path().join("models/default");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(model(), sub.join("model.onnx")).unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    let exe = dir.path().join("bin/lse-serve");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_lse-serve"), &exe).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_lse-serve"), &exe).unwrap();
    }
    let server = Server::start_exe(&exe, Some(dir.path()), false, &[]);
    let m = get(server.addr, "/v1/model").unwrap().json();
    // Answers name the file without the server's absolute path; the log has it.
    assert_eq!(m["model"]["path"], "default/model.onnx", "{m}");
    let full = dir.path().join("models/default/model.onnx");
    assert!(
        server.log_text().contains(&*full.to_string_lossy()),
        "{}",
        server.log_text()
    );
    assert!(
        m["model"]["id"].as_str().unwrap().starts_with("default-"),
        "{m}"
    );
    drop(server);

    let out = Command::new(env!("CARGO_BIN_EXE_lse-serve"))
        .args([
            "--model",
            "/nonexistent/model.onnx",
            "--addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/model.onnx") && err.contains("does not exist"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_lse-serve"))
        .args(["--workers", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn every_route_the_404_names_answers() {
    let server = Server::start(&[]);
    let a = server.addr;
    let r = get(a, "/no/such/route").unwrap();
    r.assert_error(404, "not_found");
    let detail = r.json()["detail"].as_str().unwrap().to_string();
    let (_, routes) = detail
        .split_once("; the routes are ")
        .unwrap_or_else(|| panic!("the 404 names no routes: {detail}"));
    let routes: Vec<(&str, &str)> = routes
        .split(", ")
        .map(|r| r.split_once(' ').expect("METHOD path"))
        .collect();
    for needed in [("GET", "/"), ("POST", "/v1/segment"), ("GET", "/metrics")] {
        assert!(
            routes.contains(&needed),
            "{needed:?} is not named: {detail}"
        );
    }
    for (method, template) in routes {
        let path = template
            .replace("{name}", "default")
            .replace("{version}", "1");
        // An empty body: the inference routes answer 400, the admin ones 403.
        let r = send(a, method, &path, &[], b"").unwrap();
        assert_ne!(r.status, 404, "{method} {path}: {}", r.text());
        assert_ne!(r.status, 405, "{method} {path}: {}", r.text());
    }
}
